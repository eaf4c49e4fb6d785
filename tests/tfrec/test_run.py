"""The training stages of tfrec/run.py, each called alone on the smoke preset, in fit's order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec import run as stages


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    # Frozen encoder (trainable_layers=0), so build_features caches the query and item texts.
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.query_encoder.trainable_layers=0", "train.epochs=1", "train.max_steps_per_epoch=3",
        "eval.baselines=false", "retrieval.hybrid=off"])  # dense only: tests/tfrec/test_hybrid_run.py has the fused
    job = tmp_path_factory.mktemp("stages")
    data = stages.load_data(cfg, job)
    model = stages.build_model(cfg, data)
    features = stages.build_features(cfg, data, model)
    return cfg, job, data, model, features


def test_features_cache_every_distinct_text_and_count_steps(smoke):
    cfg, _, data, _, features = smoke
    texts = set(data.train.query_text) | set(data.validation.query_text) | set(data.test.query_text)
    assert len(features.query_cache.texts) == len(texts)
    assert len(features.item_cache.texts) == len(set(data.catalog.texts)) < len(data.catalog) == 160  # distinct
    assert features.steps_per_epoch == min(3, math.ceil(data.num_train / cfg.train.batch_size)) == 3
    assert features.item_probability.shape == (160,)
    assert features.item_probability.sum() == pytest.approx(1.0, abs=1e-5)


def test_training_input_batches_and_skips(smoke):
    cfg, _, data, model, features = smoke
    strategy = tf.distribute.get_strategy()
    first = [b["item_id"].numpy() for b in stages.training_input(cfg, data, model, features, strategy).take(3)]
    assert all(len(b) == cfg.train.batch_size for b in first)
    skipped = next(iter(stages.training_input(cfg, data, model, features, strategy, skip_batches=2)))
    np.testing.assert_array_equal(skipped["item_id"].numpy(), first[2])  # a resumed run sees the same batch


def test_train_evaluate_export_then_serve(smoke):
    cfg, job, data, model, features = smoke
    state = stages.train(cfg, model, data, features, tf.distribute.get_strategy(), job / "checkpoints",
                         job / "tensorboard")
    assert state["epoch"] == 0 and state["best_epoch"] == 0
    assert (job / "checkpoints" / "best" / "weights.index").is_file()

    evaluation = stages.evaluate_model(cfg, model, data, features)
    assert evaluation.query_embeddings.shape == (60, 16) and evaluation.item_embeddings.shape == (160, 16)
    assert evaluation.baselines == {} and evaluation.ranking is None
    # recall@K counts the test queries whose held-out item ranks in the top K of the full catalog.
    scores = evaluation.query_embeddings @ evaluation.item_embeddings.T
    targets = np.array([data.catalog.position[i] for i in data.test.item_id])
    ranks = (scores > scores[np.arange(60), targets][:, None]).sum(axis=1)
    assert evaluation.model["recall@10"] == pytest.approx(float(np.mean(ranks < 10)))

    (published,) = stages.export_model(cfg, job, model, data, evaluation)
    served = tfrec.load_export(published)
    out = served.signatures["serving_default"](query_text=tf.constant(data.test.query_text[:2]),
                                               exclude_item_ids=tf.zeros([2, 0], tf.string))
    # The served top k is the evaluation's own: the best k catalog rows of its query and item embeddings.
    best = np.argsort(-scores[:2], axis=1, kind="stable")[:, :cfg.export.k]
    want = np.array(data.catalog.item_ids)[best]
    np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), want)
    np.testing.assert_allclose(out["scores"].numpy(), np.take_along_axis(scores[:2], best, axis=1),
                               rtol=1e-4, atol=1e-5)
