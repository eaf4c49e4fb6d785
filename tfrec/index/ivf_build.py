"""Build-time (numpy) pieces of the IVF index: sizing, nprobe calibration, block layout."""

from __future__ import annotations

import math

import numpy as np

# Queries used to calibrate nprobe when the caller gives none.
CALIBRATION_SAMPLE = 256
# Items copied into the block layout at a time (bounds temporaries).
_PACK_CHUNK = 65536
# Query rows scored against the full catalog at a time: bounds a [32, N] buffer.
_QUERY_CHUNK = 32


def default_num_partitions(num_items: int) -> int:
    """About ``sqrt(N)`` partitions (the usual IVF balance between centroid
    scoring, ``O(P)``, and member scoring, ``O(N / P)``), at least 1."""
    return max(1, int(round(math.sqrt(num_items))))


def calibrate_nprobe(
    embeddings: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    k: int,
    target_recall: float,
    queries: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[int, float]:
    """Smallest ``nprobe`` whose recall@k reaches ``target_recall`` on sample queries.

    Recall of IVF is decided by partitions alone: an exact top-k item is
    found iff its partition is among the query's ``nprobe`` best-scoring
    centroids. So for each (query, true neighbour) pair we compute the rank of
    the neighbour's partition and read the answer off their distribution; no
    index search is needed.

    Args:
      embeddings: float32 ``[N, d]``; centroids: float32 ``[P, d]``;
      labels: int ``[N]`` partition per item.
      k: neighbours per query that must be found.
      target_recall: in (0, 1].
      queries: float32 ``[Q, d]`` representative queries. When None,
        ``CALIBRATION_SAMPLE`` catalog items stand in for queries (each one's
        own entry is left out of its neighbours, so it cannot inflate recall).
      seed: picks the sample.

    Returns:
      ``(nprobe, estimated recall@k at that nprobe)``.
    """
    num_items, num_partitions = embeddings.shape[0], centroids.shape[0]
    self_rows = None
    if queries is None:
        rng = np.random.default_rng(seed)
        self_rows = np.sort(rng.choice(num_items, min(CALIBRATION_SAMPLE, num_items), replace=False))
        queries = embeddings[self_rows]
    queries = np.asarray(queries, dtype=np.float32)
    k = min(k, num_items - (1 if self_rows is not None else 0))
    if k < 1 or len(queries) == 0:
        return 1, 1.0
    needed = []  # per (query, neighbour): probes needed to reach its partition
    for start in range(0, len(queries), _QUERY_CHUNK):
        chunk = queries[start : start + _QUERY_CHUNK]
        scores = chunk @ embeddings.T  # [b, N]
        if self_rows is not None:
            scores[np.arange(len(chunk)), self_rows[start : start + _QUERY_CHUNK]] = -np.inf
        neighbours = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [b, k]
        order = np.argsort(-(chunk @ centroids.T), axis=1)  # [b, P] best partition first
        rank = np.empty_like(order)
        rank[np.arange(len(chunk))[:, None], order] = np.arange(num_partitions)
        needed.append(rank[np.arange(len(chunk))[:, None], labels[neighbours]] + 1)
    needed_sorted = np.sort(np.concatenate(needed).ravel())
    position = min(len(needed_sorted) - 1, max(0, math.ceil(target_recall * len(needed_sorted)) - 1))
    nprobe = int(needed_sorted[position])
    return nprobe, float(np.mean(needed_sorted <= nprobe))


def pack_blocks(
    embeddings: np.ndarray, labels: np.ndarray, sizes: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lays partitions out as transposed, padded blocks.

    Returns:
      blocks: float32 ``[num_blocks + 1, dim, block_size]`` (block ``b`` holds
        up to ``block_size`` items of one partition, one per column; padding
        columns are 0; the extra last block is all padding).
      block_rows: int32 ``[num_blocks + 1, block_size]``: position of each
        column's item in partition order, -1 for padding.
      block_offsets: int64 ``[P + 1]``: partition ``p`` owns blocks
        ``block_offsets[p]:block_offsets[p + 1]``.
      order: int64 ``[num_items]``: catalog row of the item at each position
        in partition order.
    """
    num_items, dim = embeddings.shape
    # Stable sort keeps catalog order inside a partition: deterministic.
    order = np.argsort(labels, kind="stable")
    blocks_per_partition = -(-sizes // block_size)
    block_offsets = np.concatenate([[0], np.cumsum(blocks_per_partition)]).astype(np.int64)
    num_blocks = int(block_offsets[-1])
    item_offsets = np.concatenate([[0], np.cumsum(sizes)])
    # Slot of each item (in partition order) in the flattened [num_blocks * L] layout.
    position = np.arange(num_items)
    partition = labels[order]
    slot = block_offsets[partition] * block_size + (position - item_offsets[partition])
    block_rows = np.full((num_blocks + 1) * block_size, -1, dtype=np.int32)
    block_rows[slot] = position
    # Written straight into the transposed layout, in chunks: no full-size
    # temporary copies of the catalog (1M x 64 float32 is 256 MB).
    blocks = np.zeros((num_blocks + 1, dim, block_size), dtype=np.float32)
    for start in range(0, num_items, _PACK_CHUNK):
        rows, slots = order[start : start + _PACK_CHUNK], slot[start : start + _PACK_CHUNK]
        blocks[slots // block_size, :, slots % block_size] = embeddings[rows]
    return blocks, block_rows.reshape(num_blocks + 1, block_size), block_offsets, order
