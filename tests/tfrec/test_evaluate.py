import math

import numpy as np

from tfrec import evaluate


def test_metrics_from_ranks_by_hand():
    ranks = np.array([1, 3, 20])
    m = evaluate.metrics_from_ranks(ranks, [1, 5])
    assert m["recall@1"] == 1 / 3
    assert m["recall@5"] == 2 / 3
    assert math.isclose(m["ndcg@5"], (1.0 + 1 / math.log2(4)) / 3)
    assert math.isclose(m["ndcg@1"], 1 / 3)
    assert math.isclose(m["mrr"], (1 + 1 / 3 + 1 / 20) / 3)


def test_target_ranks_with_ties_and_exclusions():
    items = np.array([[1.0], [2.0], [3.0], [2.0]])
    q = np.array([[1.0], [1.0], [1.0]])
    targets = np.array([2, 1, 3])
    ranks = evaluate.target_ranks(q, items, targets)
    # target 2 scores 3 (best) -> 1; target 1 ties with item 3 -> rank 3 (ties count against it).
    assert ranks.tolist() == [1, 3, 3]
    excl = [np.array([], np.int64), np.array([2, 3]), np.array([3, 2])]  # never the target itself
    assert evaluate.target_ranks(q, items, targets, excl).tolist() == [1, 1, 2]


def test_constant_model_gets_worst_rank():
    q = np.ones([2, 3], np.float32)
    items = np.zeros([10, 3], np.float32)
    assert evaluate.target_ranks(q, items, np.array([0, 9])).tolist() == [10, 10]


def test_embed_runs_in_batches_with_a_terminal_only_progress_bar(capsys):
    import tensorflow as tf

    def tower(features, training=False):  # [n] -> [n, 2]: (2x, the size of the batch the row came in)
        x = tf.cast(features["x"], tf.float32)
        return tf.stack([2.0 * x, tf.cast(tf.fill(tf.shape(x), tf.shape(x)[0]), tf.float32)], axis=1)

    x = np.arange(10, dtype=np.int64)
    out = evaluate.embed(tower, {"x": x}, batch_size=4, progress="embedding the catalog")
    np.testing.assert_array_equal(out[:, 0], 2.0 * x)
    np.testing.assert_array_equal(out[:, 1], [4] * 8 + [2] * 2)  # batches of 4, never the whole input
    assert "embedding the catalog" not in capsys.readouterr().err  # not a terminal: no bar in the logs
