"""Build-time (numpy) pieces of the IVF index: sizing, nprobe calibration, block layout."""

from __future__ import annotations

import math

import numpy as np

import tfrec.index.quantize as quantize

# Queries used to calibrate nprobe when the caller gives none.
CALIBRATION_SAMPLE = 1000
# Items copied into the block layout at a time (bounds temporaries).
_PACK_CHUNK = 65536
# Query rows scored against the full catalog at a time: bounds a [16, N] buffer.
_QUERY_CHUNK = 16


def default_num_partitions(num_items: int) -> int:
    """About ``sqrt(N)`` partitions (the usual IVF balance between centroid
    scoring, ``O(P)``, and member scoring, ``O(N / P)``), at least 1."""
    return max(1, int(round(math.sqrt(num_items))))


def calibration_set(
    embeddings: np.ndarray, k: int, queries: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sample queries and their exact top-k rows, for choosing search parameters from measured recall.

    Args:
      embeddings: float32 ``[N, d]``.
      k: neighbours per query.
      queries: float32 ``[Q, d]`` representative queries. When None,
        ``CALIBRATION_SAMPLE`` catalog items stand in for queries (each one's
        own entry is left out of its neighbours, so it cannot inflate recall;
        searches must exclude it too).
      seed: picks the sample.

    Returns:
      ``(queries float32 [Q, d], neighbours int64 [Q, k'] best first, self_rows int64 [Q] or None)``
      with ``k' = min(k, N - 1 if self_rows else N)`` (may be 0).
    """
    num_items = embeddings.shape[0]
    self_rows = None
    if queries is None:
        rng = np.random.default_rng(seed)
        self_rows = np.sort(rng.choice(num_items, min(CALIBRATION_SAMPLE, num_items), replace=False))
        queries = np.asarray(embeddings[self_rows], dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = max(0, min(k, num_items - (1 if self_rows is not None else 0)))
    neighbours = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries) if k else 0, _QUERY_CHUNK):
        chunk = queries[start : start + _QUERY_CHUNK]
        scores = chunk @ embeddings.T  # [b, N]
        if self_rows is not None:
            scores[np.arange(len(chunk)), self_rows[start : start + _QUERY_CHUNK]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        neighbours[start : start + len(chunk)] = np.take_along_axis(top, order, 1)
    return queries, neighbours, self_rows


def estimate_nprobe(
    queries: np.ndarray, neighbours: np.ndarray, centroids: np.ndarray, labels: np.ndarray, target_recall: float
) -> tuple[int, float]:
    """Smallest ``nprobe`` whose recall reaches ``target_recall`` if probed partitions were scored exactly.

    Recall of exact IVF is decided by partitions alone: a true neighbour is
    found iff its partition is among the query's ``nprobe`` best-scoring
    centroids. So for each (query, neighbour) pair we compute the rank of the
    neighbour's partition and read the answer off their distribution.

    Args:
      queries: float32 ``[Q, d]``; neighbours: int ``[Q, k]`` exact top-k rows;
      centroids: float32 ``[P, d]``; labels: int ``[N]`` partition per item.

    Returns:
      ``(nprobe, estimated recall@k at that nprobe)``.
    """
    if neighbours.size == 0:
        return 1, 1.0
    num_partitions = centroids.shape[0]
    needed = []  # per (query, neighbour): probes needed to reach its partition
    for start in range(0, len(queries), _QUERY_CHUNK):
        chunk, truth = queries[start : start + _QUERY_CHUNK], neighbours[start : start + _QUERY_CHUNK]
        order = np.argsort(-(chunk @ centroids.T), axis=1)  # [b, P] best partition first
        rank = np.empty_like(order)
        rank[np.arange(len(chunk))[:, None], order] = np.arange(num_partitions)
        needed.append(rank[np.arange(len(chunk))[:, None], labels[truth]] + 1)
    needed_sorted = np.sort(np.concatenate(needed).ravel())
    position = min(len(needed_sorted) - 1, max(0, math.ceil(target_recall * len(needed_sorted)) - 1))
    nprobe = int(needed_sorted[position])
    return nprobe, float(np.mean(needed_sorted <= nprobe))


def pack_blocks(
    embeddings: np.ndarray, labels: np.ndarray, sizes: np.ndarray, block_size: int, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lays partitions out as transposed, padded blocks of int8 codes of the items' residuals.

    An item ``x`` of partition ``p`` is coded as its residual ``x - centroids[p]``
    (smaller than ``x``, so its int8 codes lose less): its reconstructed score
    against a query ``q`` is ``q . centroids[p] + scale * (q . codes)``.

    Args:
      embeddings: float32 ``[N, d]``; labels: int ``[N]`` partition per item;
      sizes: int ``[P]`` items per partition; centroids: float32 ``[P, d]``.

    Returns:
      codes: int8 ``[num_blocks + 1, dim, block_size]`` (block ``b`` holds up
        to ``block_size`` items of one partition, one per column; padding
        columns are 0; the extra last block is all padding).
      scales: float32 ``[num_blocks + 1, block_size]``: each column's residual
        scale (``tfrec.index.quantize``), 0 for padding.
      block_rows: int32 ``[num_blocks + 1, block_size]``: catalog row of each
        column's item, -1 for padding.
      block_offsets: int64 ``[P + 1]``: partition ``p`` owns blocks
        ``block_offsets[p]:block_offsets[p + 1]``.
    """
    num_items, dim = embeddings.shape
    # Stable sort keeps catalog order inside a partition: deterministic.
    order = np.argsort(labels, kind="stable")
    blocks_per_partition = -(-sizes // block_size)
    block_offsets = np.concatenate([[0], np.cumsum(blocks_per_partition)]).astype(np.int64)
    num_blocks = int(block_offsets[-1])
    item_offsets = np.concatenate([[0], np.cumsum(sizes)])
    # Slot of each item (in partition order) in the flattened [num_blocks * L] layout.
    partition = labels[order]
    slot = block_offsets[partition] * block_size + (np.arange(num_items) - item_offsets[partition])
    del partition
    block_rows = np.full((num_blocks + 1) * block_size, -1, dtype=np.int32)
    block_rows[slot] = order
    # Written straight into the transposed layout, in chunks: no full-size
    # temporary copy of the float32 catalog.
    codes = np.zeros((num_blocks + 1, dim, block_size), dtype=np.int8)
    scales = np.zeros((num_blocks + 1, block_size), dtype=np.float32)
    for start in range(0, num_items, _PACK_CHUNK):
        rows, slots = order[start : start + _PACK_CHUNK], slot[start : start + _PACK_CHUNK]
        residuals = np.asarray(embeddings[rows], dtype=np.float32) - centroids[labels[rows]]
        chunk_codes, chunk_scales = quantize.quantize_rows(residuals)
        codes[slots // block_size, :, slots % block_size] = chunk_codes
        scales[slots // block_size, slots % block_size] = chunk_scales
    return codes, scales, block_rows.reshape(num_blocks + 1, block_size), block_offsets
