"""tfrec/ranking.py: ranking head, ranking task, multitask weighting (the evaluation: test_ranking_eval.py)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec.ranking import RankingHead, RankingTask


# ------------------------------------------------------------------- task
def test_regression_loss_and_metrics_by_hand():
    # labels [4, 2], scores [3, 2.5]: squared errors 1 and 0.25 -> loss (1 + 0.25) / 2 = 0.625;
    # RMSE sqrt(0.625) = 0.790569; MAE (1 + 0.5) / 2 = 0.75.
    task = RankingTask("regression")
    loss = task(tf.constant([4.0, 2.0]), tf.constant([3.0, 2.5]))
    assert loss.shape == () and math.isclose(float(loss), 0.625, rel_tol=1e-6)
    metrics = {m.name: float(m.result()) for m in task.metrics}
    assert math.isclose(metrics["ranking_rmse"], math.sqrt(0.625), rel_tol=1e-6)
    assert math.isclose(metrics["ranking_mae"], 0.75, rel_tol=1e-6)
    assert math.isclose(metrics["ranking_loss"], 0.625, rel_tol=1e-6)


def test_binary_loss_by_hand():
    # Threshold 4: ratings [5, 3, 4] -> targets [1, 0, 1]. Logits [0, 0, ln 3] ->
    # probabilities [0.5, 0.5, 0.75]; cross-entropies [ln 2, ln 2, -ln 0.75] =
    # [0.693147, 0.693147, 0.287682] -> mean 0.557992.
    task = RankingTask("binary", positive_threshold=4.0)
    np.testing.assert_array_equal(task.targets(tf.constant([5.0, 3.0, 4.0])).numpy(), [1.0, 0.0, 1.0])
    loss = task(tf.constant([5.0, 3.0, 4.0]), tf.constant([0.0, 0.0, math.log(3.0)]))
    expected = (2 * math.log(2.0) - math.log(0.75)) / 3
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    metrics = {m.name: float(m.result()) for m in task.metrics}
    assert math.isclose(metrics["ranking_logloss"], expected, rel_tol=1e-5)
    # Positives' logits (0, ln 3) against the negative's (0): one tie, one win -> AUC 0.75.
    assert math.isclose(metrics["ranking_auc"], 0.75, abs_tol=1e-3)


def test_sample_weight_weights_examples():
    # Weights [1, 0]: only the first error (1) counts; the mean stays over the batch of 2 -> 0.5.
    task = RankingTask("regression")
    loss = task(tf.constant([4.0, 2.0]), tf.constant([3.0, 9.0]), sample_weight=tf.constant([1.0, 0.0]))
    assert math.isclose(float(loss), 0.5, rel_tol=1e-6)


# ------------------------------------------------------------------- head
def make_head(kind, **kwargs):
    return RankingHead(kind, [8, 4], categorical_vocabularies={"genre": ["space", "horror"]},
                       categorical_embedding_dim=3, use_retrieval_score=True, name="ranking_head", **kwargs)


def head_inputs():
    rng = np.random.default_rng(0)
    q = tf.math.l2_normalize(tf.constant(rng.normal(size=[3, 5]), tf.float32), axis=-1)
    i = tf.math.l2_normalize(tf.constant(rng.normal(size=[3, 5]), tf.float32), axis=-1)
    return q, i, {"item_genre": tf.constant(["space", "horror", "unknown"])}


def test_head_input_is_towers_product_and_extras():
    q, i, feats = head_inputs()
    head = make_head("mlp")
    x0 = head.features(q, i, feats)
    # 3 * 5 (q, i, q * i) + 3 (genre embedding) + 1 (retrieval score)
    assert x0.shape == (3, 19)
    np.testing.assert_allclose(x0[:, 10:15], (q * i).numpy(), atol=1e-6)
    np.testing.assert_allclose(x0[:, -1], tf.reduce_sum(q * i, axis=-1), atol=1e-6)
    assert head(q, i, feats).shape == (3,)


def test_dcn_full_and_low_rank_kernels():
    q, i, feats = head_inputs()
    full, low = make_head("dcn", cross_layers=2), make_head("dcn", cross_layers=2, projection_dim=4)
    full(q, i, feats), low(q, i, feats)
    shapes = lambda head: sorted(tuple(v.shape) for v in head.trainable_variables if "cross" in v.name)
    # Full rank: W [19, 19] + b [19] per layer. Low rank: U [19, 4], V [4, 19] + b [19].
    assert shapes(full) == [(19,), (19,), (19, 19), (19, 19)]
    assert shapes(low) == [(4, 19), (4, 19), (19,), (19,), (19, 4), (19, 4)]


@pytest.mark.parametrize("kind,kwargs", [("mlp", {}), ("dcn", {}), ("dcn", {"projection_dim": 2})],
                         ids=["mlp", "dcn_full", "dcn_low_rank"])
def test_head_save_and_reload(tmp_path, kind, kwargs):
    q, i, feats = head_inputs()
    head = make_head(kind, **kwargs)
    before = head(q, i, feats).numpy()
    path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(json.loads(json.dumps(tf.keras.layers.serialize(head))))
    assert type(clone) is RankingHead and clone.get_config() == head.get_config()
    clone.build_variables(5)
    tf.train.Checkpoint(head=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(q, i, feats).numpy(), before, atol=1e-6)


def test_task_save_and_reload():
    task = RankingTask("binary", positive_threshold=3.5, name="ranking")
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(task))
    assert type(clone) is RankingTask and (clone.objective, clone.positive_threshold) == ("binary", 3.5)


def test_binary_score_is_a_probability():
    q, i, feats = head_inputs()
    head = make_head("mlp", objective="binary")
    np.testing.assert_allclose(head.score(q, i, feats), tf.sigmoid(head(q, i, feats)), atol=1e-6)


# ------------------------------------------------------------- multitask
@pytest.fixture(scope="module")
def smoke_parts():
    import tfrec.config as config_lib
    from tfrec.data import dataset, pipeline

    cfg = config_lib.build("smoke", None, ["ranking.weight=1.0", "ranking.extra_features=[categorical]"])
    data = dataset.load(cfg.data, base_dir=None)
    feats = pipeline.training_features(data.train.take(range(16)), data.catalog, data.item_probability())
    batch = next(iter(pipeline.make_dataset(feats, 16)))
    return cfg, data, batch


def make_model(smoke_parts, retrieval_weight, ranking_weight):
    from tfrec.models import build_model

    cfg, data, batch = smoke_parts
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg, data.catalog)
    model.retrieval_weight, model.ranking_weight = retrieval_weight, ranking_weight
    return model, batch


def task_losses(model, batch):
    """The two task losses computed directly (metrics untouched): (retrieval, ranking)."""
    q, i = model.query_tower(batch), model.item_tower(batch)
    retrieval = model.retrieval(q, i, batch["item_id"], batch["item_probability"], compute_batch_metrics=False)
    ranking = model.ranking(batch["label"], model.ranking_head(q, i, batch), compute_metrics=False)
    return float(retrieval), float(ranking)


def test_build_model_builds_head_only_when_ranking_has_weight(smoke_cfg):
    from tfrec.data import dataset
    from tfrec.models import build_model

    cfg = smoke_cfg()
    model = build_model(cfg, dataset.load(cfg.data, base_dir=None).catalog)
    assert model.ranking_head is None and model.ranking is None


def test_loss_is_the_weighted_sum(smoke_parts):
    model, batch = make_model(smoke_parts, 1.0, 0.5)
    retrieval, rank = task_losses(model, batch)
    assert retrieval > 0 and rank > 0
    assert math.isclose(float(model.compute_loss(batch)), retrieval + 0.5 * rank, rel_tol=1e-5)


def test_ranking_weight_zero_switches_ranking_off(smoke_parts):
    model, batch = make_model(smoke_parts, 1.0, 0.0)
    retrieval, _ = task_losses(model, batch)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch)
    assert math.isclose(float(loss), retrieval, rel_tol=1e-5)
    gradients = tape.gradient(loss, model.ranking_head.trainable_variables)
    assert model.ranking_head.trainable_variables and all(g is None for g in gradients)
    assert all(float(m.result()) == 0.0 for m in model.ranking.metrics)  # not even metrics ran
    # And a real training step leaves the head's weights where they were.
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1))
    before = [v.numpy().copy() for v in model.ranking_head.trainable_variables]
    model.train_step(batch)
    for b, v in zip(before, model.ranking_head.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_retrieval_weight_zero_switches_retrieval_off(smoke_parts):
    model, batch = make_model(smoke_parts, 0.0, 1.0)
    _, rank = task_losses(model, batch)
    assert math.isclose(float(model.compute_loss(batch)), rank, rel_tol=1e-5)
    recall = [m for m in model.metrics if m.name == "batch_recall@10"]
    assert recall and float(recall[0].result()) == 0.0  # the retrieval task never ran
    assert float([m for m in model.metrics if m.name == "ranking_rmse"][0].result()) > 0


def test_config_checks_ranking_keys(smoke_cfg):
    from tfrec.errors import ConfigError

    for bad in ("ranking.extra_features=[user_id]", "ranking.projection_dim=0", "ranking.cross_layers=0",
                "ranking.head=wide"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            smoke_cfg(bad)
