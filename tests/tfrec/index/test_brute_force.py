"""BruteForceIndex: exact top-k, clamping, exclusion, validation."""

import tfrec  # noqa: F401

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrec.index.brute_force import BruteForceIndex


def _catalog(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.array([f"item{i}" for i in range(n)])


def test_matches_numpy_argsort(helpers):
    emb, ids = _catalog()
    queries = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    scores, got = BruteForceIndex(emb, ids, k=10).search(queries)
    want_rows = helpers.exact_top_k(emb, queries, 10)
    assert got.shape == (7, 10) and scores.dtype == tf.float32 and got.dtype == tf.string
    np.testing.assert_array_equal(got.numpy().astype(str), ids[want_rows])
    want_scores = np.take_along_axis(queries @ emb.T, want_rows, 1)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-5, atol=1e-5)


def test_k_larger_than_catalog_clamps():
    emb, ids = _catalog(n=5)
    index = BruteForceIndex(emb, ids, k=10)
    scores, got = index.search(emb[:2])
    assert scores.shape == (2, 5) and got.shape == (2, 5)
    assert sorted(got.numpy()[0].astype(str)) == sorted(ids)
    # Exclusion on top of clamping: 5 items, 2 excluded -> 3 real results, rest padded.
    scores, got = index.search(emb[:1], tf.constant([["item0", "item1"]]))
    assert set(got.numpy()[0, :3].astype(str)) == {"item2", "item3", "item4"}
    assert list(got.numpy()[0, 3:]) == [b"", b""] and np.all(np.isneginf(scores.numpy()[0, 3:]))


def test_exclusion_returns_k_non_excluded(helpers):
    emb, ids = _catalog()
    queries = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
    exact = helpers.exact_top_k(emb, queries, 30)
    # Row i excludes its own exact top-(5*i) (padded with ""), plus an unknown id.
    exclude = [[ids[r] for r in exact[i, : 5 * i]] + [""] * (15 - 5 * i) + ["not-an-item"] for i in range(4)]
    scores, got = BruteForceIndex(emb, ids, k=10).search(queries, tf.constant(exclude))
    assert got.shape == (4, 10)
    for i in range(4):
        row = got.numpy()[i].astype(str)
        assert not set(row) & set(exclude[i])
        np.testing.assert_array_equal(row, ids[exact[i, 5 * i : 5 * i + 10]])
        assert np.all(np.diff(scores.numpy()[i]) <= 0)


def test_empty_exclusion_matrix_equals_no_exclusion():
    emb, ids = _catalog()
    index = BruteForceIndex(emb, ids, k=8)
    a = index.search(emb[:3])[1].numpy()
    b = index.search(emb[:3], tf.zeros([3, 0], tf.string))[1].numpy()
    np.testing.assert_array_equal(a, b)


def test_rejects_bad_input():
    emb, _ = _catalog(n=3)
    with pytest.raises(ValueError, match="unique"):
        BruteForceIndex(emb, ["a", "b", "a"], k=2)
    with pytest.raises(ValueError, match="non-empty"):
        BruteForceIndex(emb, ["a", "", "c"], k=2)
    with pytest.raises(ValueError, match="item ids"):
        BruteForceIndex(emb, ["a", "b"], k=2)
    with pytest.raises(ValueError, match="k must be"):
        BruteForceIndex(emb, ["a", "b", "c"], k=0)


def test_params_json():
    emb, ids = _catalog(n=3)
    params = BruteForceIndex(emb, ids, k=2).params()
    assert json.loads(json.dumps(params)) == {"kind": "brute_force", "k": 2, "num_items": 3, "dim": 16}
