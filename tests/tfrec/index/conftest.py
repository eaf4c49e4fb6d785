"""Makes the repo root importable so ``import tfrec`` works without installing it."""

import os
import sys

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tfrec  # noqa: E402,F401  (must precede any tensorflow import)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def clustered(num_items: int, dim: int = 32, num_centers: int = 20, num_queries: int = 100, seed: int = 0):
    """Unit-norm mixture of Gaussians: items and queries drawn around the same centers.

    Returns (items float32 [N, dim], ids str [N], queries float32 [Q, dim]).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_centers, dim))

    def draw(n):
        x = centers[rng.integers(num_centers, size=n)] + 0.5 * rng.standard_normal((n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(num_items), np.array([f"item{i}" for i in range(num_items)]), draw(num_queries)


@pytest.fixture(scope="session")
def clustered_data():
    """(items [4000, 32], ids [4000], queries [100, 32]): shared by the approximate-index tests."""
    return clustered(4000)


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-k by dot product, best first: int [Q, k]."""
    return np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]


@pytest.fixture
def helpers():
    return type("Helpers", (), {"clustered": staticmethod(clustered), "exact_top_k": staticmethod(exact_top_k)})
