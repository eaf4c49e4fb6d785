"""``rank`` and ``retrieve_and_rank``: exported with a ranking head, called through the reloaded SavedModel."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec

QUERIES = ["looking for rocket star", "jazz piano"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A smoke model with a DCN head (categorical + retrieval-score inputs), exported, then reloaded.

    Untrained weights are enough: every check compares the SavedModel with the
    Python model it came from.
    """
    from tfrec.export import savedmodel as export
    from tfrec import config as config_lib
    from tfrec import evaluate
    from tfrec.data import dataset, pipeline
    from tfrec.models import build_model

    cfg = config_lib.build("smoke", None, ["ranking.weight=1.0", "ranking.head=dcn", "ranking.projection_dim=4",
                                           "ranking.extra_features=[categorical,retrieval_score]"])
    tf.keras.utils.set_random_seed(1)
    data = dataset.load(cfg.data, base_dir=None)
    model = build_model(cfg, data.catalog)
    items = evaluate.embed(model.item_tower, pipeline.item_features(data.catalog, np.arange(len(data.catalog))))
    job = tmp_path_factory.mktemp("rank_export")
    (path,) = export.export_run(cfg, job, model, data, items, index="brute_force", k=10)
    return model, data, items, tfrec.load_export(path), path


def python_scores(model, data, items, query_text, item_ids):
    """The Python model's ranking scores of each query with each item id, float32 [len(item_ids)]."""
    q = model.query_tower({"query_text": tf.constant([query_text] * len(item_ids))})
    rows = [data.catalog.position[i] for i in item_ids]
    feats = {f"item_{c}": tf.constant([v[r] for r in rows]) for c, v in data.catalog.categorical.items()}
    return model.ranking_head.score(q, tf.constant(items[rows]), feats).numpy()


def test_signatures_present(exported):
    from tensorflow.python.saved_model import loader_impl

    *_, loaded, path = exported
    assert {"serving_default", "retrieve", "embed_query", "embed_item", "rank", "retrieve_and_rank"} <= set(
        loaded.signatures)
    defs = loader_impl.parse_saved_model(str(path)).meta_graphs[0].signature_def
    assert set(defs["rank"].inputs) == {"query_text", "item_ids"} and set(defs["rank"].outputs) == {"scores"}
    both = defs["retrieve_and_rank"]
    assert set(both.inputs) == {"query_text", "exclude_item_ids"} and "exclude_item_ids" in both.defaults
    assert set(both.outputs) == {"item_ids", "ranking_scores", "retrieval_scores"}


def test_rank_matches_the_python_model(exported):
    model, data, items, loaded, _ = exported
    ids = [["item0000", "item0005", "item0042"], ["item0100", "item0001", "item0159"]]
    scores = loaded.signatures["rank"](query_text=tf.constant(QUERIES), item_ids=tf.constant(ids))["scores"]
    assert scores.shape == (2, 3) and scores.dtype == tf.float32
    for row, (query, row_ids) in enumerate(zip(QUERIES, ids)):
        np.testing.assert_allclose(scores[row].numpy(), python_scores(model, data, items, query, row_ids),
                                   rtol=1e-4, atol=1e-5)


def test_rank_unknown_and_padding_ids_score_minus_infinity(exported):
    *_, loaded, _ = exported
    scores = loaded.signatures["rank"](query_text=tf.constant(["rocket"]),
                                       item_ids=tf.constant([["item0003", "", "no-such-item"]]))["scores"].numpy()
    assert np.isfinite(scores[0, 0]) and scores[0, 1] == -np.inf and scores[0, 2] == -np.inf


def test_retrieve_and_rank_reorders_the_retrieved_items(exported):
    *_, loaded, _ = exported
    query = tf.constant(QUERIES)
    retrieved = loaded.signatures["retrieve"](query_text=query, exclude_item_ids=tf.zeros([2, 0], tf.string))
    out = loaded.signatures["retrieve_and_rank"](query_text=query, exclude_item_ids=tf.zeros([2, 0], tf.string))
    assert out["item_ids"].shape == (2, 10)
    ranked = out["ranking_scores"].numpy()
    assert (np.diff(ranked, axis=1) <= 0).all()  # best first by the ranking head
    for row in range(2):
        by_id = dict(zip(retrieved["item_ids"][row].numpy(), retrieved["scores"][row].numpy()))
        ids = out["item_ids"][row].numpy()
        assert set(ids) == set(by_id)  # the same items, re-ordered
        np.testing.assert_allclose(out["retrieval_scores"][row].numpy(), [by_id[i] for i in ids], atol=1e-6)
        direct = loaded.signatures["rank"](query_text=query[row:row + 1], item_ids=tf.constant([ids]))["scores"]
        np.testing.assert_allclose(ranked[row], direct[0].numpy(), rtol=1e-5, atol=1e-6)


def test_retrieve_and_rank_honours_exclusions(exported):
    *_, loaded, _ = exported
    query = tf.constant(QUERIES[:1])
    first = loaded.signatures["retrieve_and_rank"](query_text=query, exclude_item_ids=tf.zeros([1, 0], tf.string))
    drop = first["item_ids"].numpy()[0, :3].tolist()
    out = loaded.signatures["retrieve_and_rank"](query_text=query, exclude_item_ids=tf.constant([drop + [b""]]))
    kept = out["item_ids"].numpy()[0].tolist()
    assert len(kept) == 10 and not set(drop) & set(kept)


def test_no_ranking_signatures_without_a_head(exported):
    from tfrec.export.savedmodel import RetrievalModule

    model, *_ = exported
    module = RetrievalModule(model.query_tower, model.item_tower, index=None, categorical_columns=["genre"])
    assert "rank" not in module.signatures() and "retrieve_and_rank" not in module.signatures()
