import math

import numpy as np
import pytest

from tfrec import evaluate
from tfrec.data import dataset


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


def test_a_diverged_model_ranks_its_targets_last():
    # NaN compares false with every score, so without a rule the NaN target would count no item above it.
    q = np.array([[np.nan, 1.0], [1.0, 0.0], [np.inf, 0.0]], np.float32)
    items = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
    assert evaluate.target_ranks(q, items, np.array([0, 0, 1])).tolist() == [3, 1, 3]


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


# Training counts of catalog rows 0..3. By hand: row 2 leads (2^24 + 1), then the two 2^24 rows in catalog
# order (0, then 1), then row 3. The float scores count - row / 8 = [2^24, 2^24 - 0.125, 2^24 + 0.75, 2.625]
# round to [2^24, 2^24, 2^24, 2.625] in float32, where rows 0, 1 and 2 would all take rank 3.
COUNTS = np.array([2**24, 2**24, 2**24 + 1, 3])


def test_popularity_order_is_integer_and_never_ties_where_float32_would():
    order = evaluate.popularity_order(COUNTS)
    assert order.dtype == np.int64 and order.tolist() == [2, 1, 3, 0]
    assert evaluate.ranks_from_item_scores(order, [0, 1, 2, 3]).tolist() == [2, 3, 1, 4]
    assert evaluate.ranks_from_item_scores(order, [1], [np.array([0, 2])]).tolist() == [1]  # rows ahead left out


def test_popularity_and_bm25_break_ties_by_the_same_order_end_to_end(tmp_path, monkeypatch):
    from tests.tfrec.data.test_dataset import make_cfg, rows
    from tfrec import baselines

    data = dataset.load(make_cfg(tmp_path, rows(n_users=4, per_user=4)).data)
    monkeypatch.setattr(data, "item_counts", lambda: COUNTS)
    # Test targets: u0 i4, u1 i1, u2 i2, u3 i3 = rows 3, 0, 1, 2, so ranks 4, 2, 3, 1 (the order above).
    # The query texts ("query 3 3"...) share no word with the titles: BM25 scores all 0, popularity decides.
    want = {"recall@1": 0.25, "recall@2": 0.5, "recall@3": 0.75, "mrr": (1 / 4 + 1 / 2 + 1 / 3 + 1) / 4}
    for result in (evaluate.popularity_baseline(data, "test", [1, 2, 3]),
                   baselines.bm25_baseline(data, "test", [1, 2, 3])):
        assert {k: result[k] for k in want} == pytest.approx(want)


def test_validation_sample_is_seeded_sorted_and_all_when_small():
    a = evaluate.validation_sample(1000, 50, seed=3)
    assert a.tolist() == evaluate.validation_sample(1000, 50, seed=3).tolist()  # a restart sees the same rows
    assert len(set(a.tolist())) == 50 and a.tolist() == sorted(a.tolist())
    assert a.tolist() != evaluate.validation_sample(1000, 50, seed=4).tolist()
    assert evaluate.validation_sample(40, 50, seed=3) is None and evaluate.validation_sample(40, 0, seed=3) is None
