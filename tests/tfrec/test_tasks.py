"""tfrec/tasks.py: the retrieval loss worked out by hand (temperature, logQ, accidental hits, hard negatives)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec.tasks import RetrievalTask


def test_retrieval_loss_by_hand():
    # Two queries, two items, temperature 1, no corrections:
    # logits = [[1, 0], [0, 1]]; each row's softmax cross-entropy is
    # -log(e / (e + 1)) = log(1 + e^-1) = 0.313262; the mean is the same.
    task = RetrievalTask(temperature=1.0, logq_correction=False, remove_accidental_hits=False)
    q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    loss = task(q, q, tf.constant(["a", "b"]))
    assert math.isclose(float(loss), math.log(1 + math.exp(-1)), rel_tol=1e-5)


def test_temperature_and_logq_by_hand():
    # temperature 0.5 doubles the logits: [[2, 0], [0, 2]] -> log(1 + e^-2) = 0.126928.
    task = RetrievalTask(temperature=0.5, logq_correction=True, remove_accidental_hits=False)
    q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    equal = task(q, q, tf.constant(["a", "b"]), item_probability=tf.constant([0.5, 0.5]))
    assert math.isclose(float(equal), math.log(1 + math.exp(-2)), rel_tol=1e-5)  # equal p: no change
    # p = [0.8, 0.2]: logits - log p -> row 0: [2 - log .8, -log .2] -> loss log(1 + e^(log(.8/.2) - 2))
    skew = task(q, q, tf.constant(["a", "b"]), item_probability=tf.constant([0.8, 0.2]))
    row0 = math.log(1 + math.exp(math.log(4.0) - 2))
    row1 = math.log(1 + math.exp(-math.log(4.0) - 2))
    assert math.isclose(float(skew), (row0 + row1) / 2, rel_tol=1e-5)


def test_accidental_hits_removed():
    # Rows 0 and 1 share item "a": without removal each treats the other's copy as a
    # negative with the same logit as its positive (loss log 2 for those rows).
    q = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    ids = tf.constant(["a", "a"])
    keep = RetrievalTask(temperature=1.0, logq_correction=False, remove_accidental_hits=False)(q, q, ids)
    removed = RetrievalTask(temperature=1.0, logq_correction=False, remove_accidental_hits=True)(q, q, ids)
    assert math.isclose(float(keep), math.log(2), rel_tol=1e-5)
    assert float(removed) < 1e-5


def test_hard_negatives_keep_the_hardest():
    q = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    c = tf.constant([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.9, 0.0, 1.0]])
    ids = tf.constant(["a", "b", "c"])
    hard = RetrievalTask(temperature=1.0, logq_correction=False, remove_accidental_hits=False, num_hard_negatives=1)
    # Row 0 logits [1, .5, .9]: hardest negative .9 -> log(1 + e^(.9 - 1)).
    row0 = math.log(1 + math.exp(-0.1))
    row1 = math.log(1 + math.exp(0 - 1))  # logits [0, 1, 0]: negatives tie at 0
    row2 = math.log(1 + math.exp(0 - 1))
    assert math.isclose(float(hard(q, c, ids)), (row0 + row1 + row2) / 3, rel_tol=1e-5)


def test_task_config_round_trip():
    task = RetrievalTask(temperature=0.1, logq_correction=False, num_hard_negatives=3)
    clone = RetrievalTask.from_config(task.get_config())
    assert clone.get_config() == task.get_config()
    assert isinstance(clone.get_config()["logq_correction"], bool)


def test_catalog_positions_find_the_same_accidental_hits_as_ids(smoke_cfg, tmp_path):
    """The pipeline's int64 ``item_position`` replaces string ids in the hit mask: the same loss, faster."""
    from tfrec.data import dataset, pipeline
    from tfrec.models import build_model

    cfg = smoke_cfg()
    data = dataset.load(cfg.data, base_dir=str(tmp_path))
    rows = [0, 1, 2, 0, 3, 1]  # examples 0 and 1 twice: in-batch copies of their positives
    feats = pipeline.training_features(data.train.take(rows), data.catalog, data.item_probability())
    batch = {k: tf.constant(v.astype(str).tolist()) if v.dtype == object else tf.constant(v) for k, v in feats.items()}
    assert batch["item_position"].dtype == tf.int64
    model = build_model(cfg, data.catalog)
    by_position = float(model.compute_loss(batch))
    by_id = float(model.compute_loss({k: v for k, v in batch.items() if k != "item_position"}))
    assert by_position == pytest.approx(by_id, rel=1e-6)
    model.retrieval.remove_accidental_hits = model.retrieval.task._remove_accidental_hits = False
    assert float(model.compute_loss(batch)) != pytest.approx(by_id, rel=1e-3)  # the duplicates do matter
