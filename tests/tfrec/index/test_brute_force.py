"""BruteForceIndex: exact top-k, clamping, exclusion, save/load."""

import tfrec  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from tfrec.index.brute_force import BruteForceIndex


def _catalog(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.array([f"item{i}" for i in range(n)])


def test_matches_numpy_argsort():
    emb, ids = _catalog()
    queries = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    scores, got = BruteForceIndex(emb, ids, k=10).search(queries)
    exact = queries @ emb.T
    want_rows = np.argsort(-exact, axis=1)[:, :10]
    assert got.shape == (7, 10)
    np.testing.assert_array_equal(got.numpy().astype(str), ids[want_rows])
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(exact, want_rows, 1), rtol=1e-5, atol=1e-5)


def test_k_larger_than_catalog_clamps():
    emb, ids = _catalog(n=5)
    scores, got = BruteForceIndex(emb, ids, k=10).search(emb[:2])
    assert scores.shape == (2, 5) and got.shape == (2, 5)
    assert sorted(got.numpy()[0].astype(str)) == sorted(ids)


def test_rejects_duplicate_and_empty_ids():
    emb, _ = _catalog(n=3)
    with pytest.raises(ValueError, match="unique"):
        BruteForceIndex(emb, ["a", "b", "a"], k=2)
    with pytest.raises(ValueError, match="non-empty"):
        BruteForceIndex(emb, ["a", "", "c"], k=2)
