"""Build-time k-means (numpy) for the IVF index.

Plain Lloyd iterations with k-means++ seeding, on a random sample of the
catalog (Faiss-style: clustering quality saturates at a few hundred points per
centroid, and the full catalog is only needed for the final assignment).
Deterministic for a given seed. Squared-L2 geometry: partitions are compact
regions of embedding space, which is what lets a query skip most of them.
"""

from __future__ import annotations

import numpy as np

# Points per centroid used to train the centroids; more buys little.
SAMPLE_PER_CENTROID = 128
# k-means++ seeding is sequential (one pass per centroid), so it runs on a
# smaller subsample to keep build time linear in the number of centroids.
SEED_PER_CENTROID = 16
# Rows scored against the centroids at a time: bounds the [chunk, P] buffer.
_CHUNK = 16384


def assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (squared L2) of every point.

    Args:
      points: float32 ``[n, d]``.
      centroids: float32 ``[P, d]``.

    Returns:
      int64 ``[n]`` centroid index per point.
    """
    # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2): one matmul, no [n, P, d].
    half_norms = 0.5 * np.einsum("pd,pd->p", centroids, centroids)
    labels = np.empty(points.shape[0], dtype=np.int64)
    for start in range(0, points.shape[0], _CHUNK):
        block = points[start : start + _CHUNK] @ centroids.T
        block -= half_norms
        labels[start : start + _CHUNK] = np.argmax(block, axis=1)
    return labels


def _squared_distances(points: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    diff = points - centroids[labels]
    return np.einsum("nd,nd->n", diff, diff)


def _kmeans_plus_plus(points: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability ~ D(x)^2."""
    n = points.shape[0]
    centroids = np.empty((num_clusters, points.shape[1]), dtype=np.float32)
    centroids[0] = points[rng.integers(n)]
    closest = np.einsum("nd,nd->n", points - centroids[0], points - centroids[0])
    for c in range(1, num_clusters):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: duplicate a point
            centroids[c] = points[rng.integers(n)]
            continue
        pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total))
        centroids[c] = points[min(pick, n - 1)]
        diff = points - centroids[c]
        np.minimum(closest, np.einsum("nd,nd->n", diff, diff), out=closest)
    return centroids


def _update(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Means of each cluster; empty clusters are re-seeded at the worst-fit points."""
    num_clusters, dim = centroids.shape
    counts = np.bincount(labels, minlength=num_clusters).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=points[:, j], minlength=num_clusters) for j in range(dim)], 1)
    updated = centroids.copy()
    nonempty = counts > 0
    updated[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    empty = np.flatnonzero(~nonempty)
    if empty.size:
        # Points farthest from their centroid are the ones the current
        # clustering serves worst; moving an idle centroid there helps most.
        worst = np.argsort(-_squared_distances(points, centroids, labels))[: empty.size]
        updated[empty[: worst.size]] = points[worst]
    return updated


def kmeans(points: np.ndarray, num_clusters: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Trains ``num_clusters`` centroids on (a sample of) ``points``.

    Args:
      points: float32 ``[n, d]``.
      num_clusters: ``P``, at most ``n``.
      iterations: Lloyd iterations after seeding.
      seed: makes sampling and seeding deterministic.

    Returns:
      float32 ``[P, d]`` centroids.
    """
    n = points.shape[0]
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    rng = np.random.default_rng(seed)
    sample_size = min(n, SAMPLE_PER_CENTROID * num_clusters)
    sample = points if sample_size == n else points[np.sort(rng.choice(n, sample_size, replace=False))]
    seed_size = min(sample_size, SEED_PER_CENTROID * num_clusters)
    seeds = sample if seed_size == sample_size else sample[rng.choice(sample_size, seed_size, replace=False)]
    centroids = _kmeans_plus_plus(np.ascontiguousarray(seeds), num_clusters, rng)
    for _ in range(iterations):
        labels = assign(sample, centroids)
        updated = _update(sample, labels, centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids
