import math

import numpy as np
import pytest

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


def test_embed_traces_a_tower_once_and_sees_its_new_weights():
    import gc
    import weakref

    import tensorflow as tf

    class Tower(tf.keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.traces = 0  # Python runs only while tracing
            self.dense = tf.keras.layers.Dense(3)

        def call(self, features, training=False):
            self.traces += 1
            return self.dense(tf.cast(features["x"], tf.float32)[:, None])

    tower, x = Tower(), np.arange(10, dtype=np.int64)
    evaluate.embed(tower, {"x": x}, batch_size=4)  # batches of 4, 4, 2
    traced = tower.traces
    assert traced >= 1
    tower.dense.kernel.assign(tower.dense.kernel * 2.0 + 1.0)  # an epoch of training in between
    for rows in (x, x[:7]):  # the next epoch, and another sample size
        out = evaluate.embed(tower, {"x": rows}, batch_size=4)
        np.testing.assert_allclose(out, tower({"x": tf.constant(rows)}).numpy(), rtol=1e-6)
    assert tower.traces == traced + 2  # the two direct calls above, no new trace inside embed
    assert evaluate._tower_fn(tower).experimental_get_tracing_count() == traced

    gone = weakref.ref(tower)
    del tower
    gc.collect()
    assert gone() is None  # the cache keeps no tower alive


def _dense_ranks(q, items, targets, exclude):
    """The whole [queries, items] matrix at once: the reference the blocked code must equal."""
    scores = q.astype(np.float32) @ items.astype(np.float32).T
    target_scores = scores[np.arange(len(targets)), targets]
    for r, skip in enumerate(exclude or []):
        scores[r, skip[skip != targets[r]]] = -np.inf
    return (scores >= target_scores[:, None]).sum(axis=1)


def _random_case(seed, n_queries=23, n_items=37, dim=3, ties=True):
    rng = np.random.default_rng(seed)
    # Small integers: every dot product is exact in float32, so ties are real ties whatever the summation order.
    draw = (lambda *s: rng.integers(-1, 2, size=s).astype(np.float32)) if ties else \
        (lambda *s: rng.normal(size=s).astype(np.float32))
    q, items = draw(n_queries, dim), draw(n_items, dim)
    targets = rng.integers(0, n_items, size=n_queries)
    exclude = [rng.choice(n_items, size=rng.integers(0, 6), replace=False) for _ in range(n_queries)]
    exclude[0] = np.append(exclude[0], targets[0])  # a listed target stays ranked
    return q, items, targets, exclude


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_blocked_ranks_and_metrics_equal_the_dense_computation(ties, exclude_seen):
    for seed in range(3):
        q, items, targets, exclude = _random_case(seed, ties=ties)
        exclude = exclude if exclude_seen else None
        dense = _dense_ranks(q, items, targets, exclude)
        for query_chunk, item_chunk in [(1, 1), (4, 5), (7, 64), (1024, 16384)]:
            blocked = evaluate.target_ranks(q, items, targets, exclude, query_chunk, item_chunk)
            assert blocked.tolist() == dense.tolist(), (seed, query_chunk, item_chunk)
            assert evaluate.metrics_from_ranks(blocked, [1, 5, 10]) == evaluate.metrics_from_ranks(dense, [1, 5, 10])


def test_popularity_ranks_by_sorting_equal_the_blocked_ranks():
    _, _, targets, exclude = _random_case(2)
    scores = np.random.default_rng(0).integers(0, 5, size=37).astype(np.float32)  # many ties
    ones = np.ones([len(targets), 1], np.float32)
    for excl in (None, exclude):
        np.testing.assert_array_equal(evaluate.ranks_from_item_scores(scores, targets, excl),
                                      evaluate.target_ranks(ones, scores[:, None], targets, excl, 4, 5))


def test_validation_sample_is_seeded_sorted_and_all_when_small():
    a = evaluate.validation_sample(1000, 50, seed=3)
    assert a.tolist() == evaluate.validation_sample(1000, 50, seed=3).tolist()  # a restart sees the same rows
    assert len(set(a.tolist())) == 50 and a.tolist() == sorted(a.tolist())
    assert a.tolist() != evaluate.validation_sample(1000, 50, seed=4).tolist()
    assert evaluate.validation_sample(40, 50, seed=3) is None and evaluate.validation_sample(40, 0, seed=3) is None
