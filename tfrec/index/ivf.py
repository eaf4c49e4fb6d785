"""Inverted-file (IVF) approximate retrieval in pure TensorFlow.

Build (numpy, deterministic per ``seed``): k-means (``tfrec.index.kmeans``)
splits the catalog into ``num_partitions`` (default ~sqrt(N)) partitions.
Each partition is stored as whole blocks of ``BLOCK_SIZE`` items of int8 codes
of the items' residuals to the partition's centroid, with per-item scales
(``tfrec.index.quantize``; a residual is smaller than the item, so its codes
lose less), transposed to
``[dim, BLOCK_SIZE]`` and zero-padded (``tfrec.index.ivf_build``). With
``quantization="none"`` (kind ``ivf``) the float32 embeddings are kept too,
and the best ``RESCORE_FACTOR * k + e`` candidates of the int8 scan are
re-scored exactly from them; with ``"int8"`` (kind ``ivf_int8``) they are not
kept and the scan's scores (dot products with the int8 reconstruction) are
final: a quarter of the memory.

Unless ``nprobe`` is given, it is calibrated from measured recall: the
partition ranks of sample queries' exact neighbours give a first estimate
(``ivf_build.estimate_nprobe``), then the built index itself searches those
queries and ``nprobe`` grows until it reaches ``target_recall`` (default 0.95)
recall@k (``calibration_queries``, or catalog items standing in for queries).

Query: score the centroids (``[B, P]`` matmul), take the ``nprobe`` best
partitions and list every probed (query, block) pair (a ragged range of
block ids per probed partition, flattened). Each pair is scored by a
``[1, d] x [d, BLOCK_SIZE]`` product of the query and the block's codes cast
to float32 (one flat BatchMatMul, in cache-sized chunks), scaled, plus the
query's score against the partition's centroid: the int8 gather moves
a quarter of the bytes float32 blocks did, which is what bounds this step.
Candidates are then taken block-wise: a query's best ``c`` items lie in its
``c`` blocks with the best maxima, so only those blocks' scores are regrouped
per query. Cost per query is ``O(P * d + M * d)`` for ``M ~ nprobe * N / P``
scanned items instead of ``O(N * d)``.

Only core TF ops (MatMul, BatchMatMulV2, Cast, TopKV2, GatherV2, RaggedRange,
If, ...) are used, so a SavedModel holding this index runs on stock TensorFlow
Serving.

Usage::

    index = IVFIndex(item_embeddings, item_ids, k=10)                        # calibrated nprobe
    index = IVFIndex(item_embeddings, item_ids, k=10, quantization="int8")   # kind "ivf_int8"
    index = IVFIndex(item_embeddings, item_ids, k=10, nprobe=16)             # fixed nprobe
    scores, ids = index.search(query_embeddings, exclude_item_ids=seen)
    index.params()["nprobe"], index.params()["calibrated_recall"]

Guarantee: every search returns ``k' = min(k, num_items)`` results. If the
probed partitions hold fewer than ``k'`` usable (non-excluded) items for a
query, that query (only) is answered by a full scan instead (exact for
``ivf``, over the int8 codes for ``ivf_int8``).

Centroids are scored by dot product (the retrieval score) while partitions are
formed in L2 geometry; for unit-norm embeddings the two agree.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfrec.index.base as base
import tfrec.index.ivf_build as ivf_build
import tfrec.index.kmeans as kmeans
import tfrec.index.quantize as quantize
from tfrec.index.ivf_build import default_num_partitions  # noqa: F401  (re-export)

# Lloyd iterations at build time; partition quality barely moves after ~10.
KMEANS_ITERATIONS = 10
# Items per storage block. Partitions are padded to whole blocks (~L/2 wasted
# slots per partition); smaller blocks waste less but add per-block overhead.
BLOCK_SIZE = 64
# Gathered block data (as float32) scored per step at query time; sized to stay in cache.
PAIR_CHUNK_BYTES = 16 * 2**20
# ivf (float32 kept) re-scores this many times k' best int8 candidates, plus e.
RESCORE_FACTOR = 2
# Blocks cast and scored per step of the full scan (rows the probed partitions left short).
SCAN_BLOCKS_PER_STEP = 512
# Calibration raises nprobe by this factor (at least 1) until measured recall reaches the target,
# then bisects back over the last step.
_NPROBE_GROWTH = 1.25


class IVFIndex(base.ApproximateIndex):
    """Approximate dot-product top-k via an inverted file of int8 blocks.

    Args:
      item_embeddings: float32 ``[num_items, dim]``.
      item_ids: ``[num_items]`` unique, non-empty strings.
      k: results per query; searches return ``k' = min(k, num_items)``.
      num_partitions: k-means partitions ``P``; default ``~sqrt(num_items)``,
        clamped to ``[1, num_items]``.
      nprobe: partitions scanned per query, clamped to ``[1, P]``. Default:
        calibrated to ``target_recall``.
      target_recall: recall@k the calibrated ``nprobe`` must reach on the
        calibration queries (ignored when ``nprobe`` is given).
      calibration_queries: optional float32 ``[Q, dim]`` representative
        queries for calibration; default: 1000 catalog items.
      quantization: ``"none"`` (kind ``ivf``: float32 kept, candidates
        re-scored exactly) or ``"int8"`` (kind ``ivf_int8``: codes only).
      seed: k-means and calibration sampling seed (build is deterministic).
      name: ``tf.Module`` name.
    """

    def __init__(
        self,
        item_embeddings: np.ndarray | tf.Tensor,
        item_ids: np.ndarray | tf.Tensor | Sequence[str],
        k: int,
        num_partitions: int | None = None,
        nprobe: int | None = None,
        target_recall: float = 0.95,
        calibration_queries: np.ndarray | tf.Tensor | None = None,
        quantization: str = "none",
        seed: int = 0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        embeddings, ids = base.init_catalog(self, item_embeddings, item_ids, k)
        self.quantization = quantize.check_quantization(quantization)
        self.kind = "ivf" if self.quantization == "none" else "ivf_int8"
        if num_partitions is None:
            num_partitions = default_num_partitions(self.num_items)
        self.num_partitions = int(min(max(1, num_partitions), self.num_items))
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        self.seed = int(seed)

        centroids = kmeans.kmeans(embeddings, self.num_partitions, KMEANS_ITERATIONS, seed=self.seed)
        labels = kmeans.assign(embeddings, centroids)
        sizes = np.bincount(labels, minlength=self.num_partitions)
        self.max_partition_size = int(sizes.max())
        self.empty_partitions = int((sizes == 0).sum())
        codes, scales, block_rows, block_offsets = ivf_build.pack_blocks(
            embeddings, labels, sizes, BLOCK_SIZE, centroids)
        self.num_blocks = int(block_offsets[-1])

        self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
        # [num_blocks + 1, dim, BLOCK_SIZE] int8 residual codes; the last block is the all-padding sentinel.
        self.codes = tf.Variable(codes, trainable=False, name="codes")
        # [num_blocks + 1, BLOCK_SIZE] float32 per-item residual scales, 0 = padding slot.
        self.scales = tf.Variable(scales, trainable=False, name="scales")
        # [num_blocks + 1, BLOCK_SIZE] int32 catalog row, -1 = padding slot.
        self.block_rows = tf.Variable(block_rows, trainable=False, name="block_rows")
        # [P + 1] int64: partition p owns blocks block_offsets[p]:block_offsets[p + 1].
        self.block_offsets = tf.Variable(block_offsets, trainable=False, name="block_offsets")
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")
        del codes, scales, block_rows
        if self.quantization == "none":  # [num_items, dim] float32, catalog order
            self.item_embeddings = tf.Variable(embeddings, trainable=False, name="item_embeddings")

        self.target_recall: float | None = None
        self.calibrated_recall: float | None = None
        if nprobe is None:
            nprobe = self._calibrate(embeddings, centroids, labels, ids, target_recall, calibration_queries)
        self.nprobe = int(min(max(1, nprobe), self.num_partitions))

    def _calibrate(self, embeddings, centroids, labels, ids, target_recall, calibration_queries) -> int:
        """Smallest nprobe (from the partition-rank estimate upwards) whose measured recall@k reaches the target."""
        if calibration_queries is not None:
            calibration_queries = base.as_embeddings(calibration_queries)
            if calibration_queries.shape[1] != self.dim:
                raise ValueError(f"calibration_queries have dim {calibration_queries.shape[1]}, items have {self.dim}")
        queries, truth, self_rows = ivf_build.calibration_set(embeddings, self.k_out, calibration_queries, self.seed)
        self.target_recall = float(target_recall)
        nprobe, self.calibrated_recall = ivf_build.estimate_nprobe(queries, truth, centroids, labels, target_recall)
        if truth.size == 0:
            return nprobe
        exclude = ids[self_rows][:, None] if self_rows is not None else np.zeros([len(queries), 0], object)
        truth_ids = ids[truth]
        failing = None  # largest nprobe measured below the target
        while True:
            self.nprobe = int(min(nprobe, self.num_partitions))
            self.calibrated_recall = _recall(self._measure_search(queries, exclude), truth_ids)
            if self.calibrated_recall >= target_recall or self.nprobe == self.num_partitions:
                break
            failing = self.nprobe
            nprobe = max(self.nprobe + 1, int(self.nprobe * _NPROBE_GROWTH))
        passing, passing_recall = self.nprobe, self.calibrated_recall
        # The growth steps can overshoot: bisect between the last failing and the first passing nprobe.
        while failing is not None and passing_recall >= target_recall and passing - failing > 1:
            self.nprobe = (failing + passing) // 2
            recall = _recall(self._measure_search(queries, exclude), truth_ids)
            if recall >= target_recall:
                passing, passing_recall = self.nprobe, recall
            else:
                failing = self.nprobe
        self.calibrated_recall = passing_recall
        return passing

    def _measure_search(self, queries: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Ids ``[Q, k']`` the index returns at the current ``self.nprobe`` (traced afresh: nprobe is static)."""
        search = tf.function(self.search, autograph=False)
        found = []
        for start in range(0, len(queries), 64):
            found.append(search(tf.constant(queries[start : start + 64]),
                                tf.constant(exclude[start : start + 64].astype(bytes)))[1].numpy())
        return np.concatenate(found)

    def _search_approx(
        self, queries: tf.Tensor, exclude_item_ids: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """IVF search; returns (scores [B, k'], ids [B, k'], num_valid int32 [B])."""
        batch = tf.shape(queries)[0]
        centroid_scores = tf.matmul(queries, self.centroids, transpose_b=True)  # [B, P]
        probe_scores, probed = tf.math.top_k(centroid_scores, k=self.nprobe, sorted=False)  # [B, nprobe]
        starts = tf.gather(self.block_offsets[:-1], probed)  # [B, nprobe] int64
        limits = tf.gather(self.block_offsets[1:], probed)
        # Every probed (query, block) pair, flat and query-major: no padding
        # where the expensive work (gathering blocks, scoring them) happens.
        pair_blocks = tf.ragged.range(tf.reshape(starts, [-1]), tf.reshape(limits, [-1])).flat_values  # [pairs]
        blocks_per_query = tf.cast(tf.reduce_sum(limits - starts, axis=1), tf.int32)  # [B]
        pair_query = tf.repeat(tf.range(batch), blocks_per_query)  # [pairs]
        # The query's score against the centroid of the pair's partition (blocks hold residual codes).
        pair_bias = tf.repeat(tf.reshape(probe_scores, [-1]), tf.reshape(limits - starts, [-1]))  # [pairs]
        pair_scores = self._score_pairs(queries, pair_blocks, pair_query, pair_bias)  # [pairs, L]
        # A sentinel pair (the padding block, all -inf) stands in where a query has fewer blocks than wanted.
        pair_scores = tf.concat([pair_scores, tf.fill([1, BLOCK_SIZE], base.NEG_INF)], axis=0)
        pair_blocks = tf.concat([pair_blocks, tf.constant([self.num_blocks], tf.int64)], axis=0)

        extra = tf.shape(exclude_item_ids)[1]
        wanted = (RESCORE_FACTOR if self.quantization == "none" else 1) * self.k_out + extra
        # A query's best `wanted` items lie in its `wanted` blocks with the best maxima. Padding slots
        # score their centroid's score here (masked only below, off the hot path), which can lift the
        # maximum of a partition's last, partly padded block: taking nprobe more blocks than wanted keeps
        # the selection exact.
        best_in_block = tf.RaggedTensor.from_row_lengths(
            tf.reduce_max(pair_scores[:-1], axis=1), blocks_per_query, validate=False
        ).to_tensor(default_value=base.NEG_INF)  # [B, max blocks per query]
        num_best = tf.minimum(wanted + self.nprobe, tf.shape(best_in_block)[1])
        _, best_blocks = tf.math.top_k(best_in_block, k=num_best, sorted=False)  # [B, num_best]
        first_pair = tf.cumsum(blocks_per_query, exclusive=True)[:, tf.newaxis]
        pairs = tf.where(best_blocks < blocks_per_query[:, tf.newaxis], first_pair + best_blocks,
                         tf.shape(pair_scores)[0] - 1)  # [B, num_best]; padding -> sentinel
        scores = tf.reshape(tf.gather(pair_scores, pairs), [batch, -1])  # [B, num_best * L]
        slots = tf.reshape(tf.gather(pair_blocks, pairs)[:, :, tf.newaxis] * BLOCK_SIZE
                           + tf.range(BLOCK_SIZE, dtype=tf.int64), [batch, -1])
        scores = tf.pad(scores, [[0, 0], [0, tf.maximum(0, wanted - tf.shape(scores)[1])]],
                        constant_values=base.NEG_INF)
        slots = tf.pad(slots, [[0, 0], [0, tf.maximum(0, wanted - tf.shape(slots)[1])]],
                       constant_values=self.num_blocks * BLOCK_SIZE)
        candidate_rows = tf.gather(tf.reshape(self.block_rows, [-1]), slots)
        scores = tf.where(candidate_rows >= 0, scores, tf.constant(base.NEG_INF, tf.float32))
        top_scores, positions = tf.math.top_k(scores, k=wanted, sorted=True)
        rows = tf.gather(candidate_rows, positions, batch_dims=1)
        if self.quantization == "none":
            top_scores = self._rescore(queries, top_scores, rows)
        return base.filter_excluded(top_scores, rows, self.item_ids, exclude_item_ids, self.k_out)

    def _rescore(self, queries: tf.Tensor, scores: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """Exact float32 scores ``[B, c]`` of candidate ``rows`` ``[B, c]`` (``-inf`` stays ``-inf``)."""
        embeddings = tf.gather(self.item_embeddings, tf.maximum(rows, 0))  # [B, c, d]
        exact = tf.squeeze(tf.matmul(embeddings, queries[:, :, tf.newaxis]), axis=2)
        return tf.where(tf.math.is_finite(scores), exact, tf.constant(base.NEG_INF, tf.float32))

    def _score_pairs(
        self, queries: tf.Tensor, pair_blocks: tf.Tensor, pair_query: tf.Tensor, pair_bias: tf.Tensor
    ) -> tf.Tensor:
        """int8-reconstruction scores of every item in the given (query, block) pairs.

        Args:
          queries: float32 ``[B, d]``.
          pair_blocks: int64 ``[pairs]`` block ids; pair_query: int32
            ``[pairs]`` query row of each pair; pair_bias: float32 ``[pairs]``
            the query's score against the block's centroid.

        Returns:
          float32 ``[pairs, BLOCK_SIZE]``; padding slots score the bias (their scale is 0): mask them.
        """
        # One [1, d] x [d, L] product per pair as a flat BatchMatMul
        # [pairs, 1, d] x [pairs, d, L]: the L contiguous columns vectorise
        # well. Pairs go through in chunks of ~PAIR_CHUNK_BYTES (as float32)
        # so each gathered and cast chunk is still in cache when the matmul
        # reads it; chunk sizes are evened out so the last chunk adds at most
        # a few padding pairs.
        num_pairs = tf.shape(pair_blocks)[0]
        max_chunk = max(1, PAIR_CHUNK_BYTES // (4 * self.dim * BLOCK_SIZE))

        def score_chunk(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            blocks, query_rows, bias = args
            member_codes = tf.cast(tf.gather(self.codes, blocks), tf.float32)  # [chunk, d, L]
            chunk_queries = tf.gather(queries, query_rows)[:, tf.newaxis, :]  # [chunk, 1, d]
            scales = tf.gather(self.scales, blocks)  # [chunk, L]
            dots = tf.reshape(tf.matmul(chunk_queries, member_codes), [-1, BLOCK_SIZE])
            return dots * scales + bias[:, tf.newaxis]

        def chunked() -> tf.Tensor:
            num_chunks = (num_pairs + max_chunk - 1) // max_chunk
            chunk = (num_pairs + num_chunks - 1) // num_chunks
            padding = num_chunks * chunk - num_pairs
            chunk_blocks = tf.pad(pair_blocks, [[0, padding]], constant_values=self.num_blocks)
            chunk_query = tf.pad(pair_query, [[0, padding]])
            chunk_bias = tf.pad(pair_bias, [[0, padding]])
            scores = tf.map_fn(
                score_chunk,
                (tf.reshape(chunk_blocks, [num_chunks, -1]), tf.reshape(chunk_query, [num_chunks, -1]),
                 tf.reshape(chunk_bias, [num_chunks, -1])),
                fn_output_signature=tf.TensorSpec([None, BLOCK_SIZE], tf.float32),
                parallel_iterations=1,  # the ops inside already use every core
            )
            return tf.reshape(scores, [-1, BLOCK_SIZE])[:num_pairs]

        # The loop costs ~0.5 ms of fixed overhead: skip it when one chunk
        # holds everything (small batches).
        return tf.cond(num_pairs <= max_chunk, lambda: score_chunk((pair_blocks, pair_query, pair_bias)), chunked)

    def _search_exact(self, queries: tf.Tensor, exclude_item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Search over every item (only for queries the probed partitions left short)."""
        if self.quantization == "none":
            return base.exact_search(queries, self.item_embeddings, self.item_ids, exclude_item_ids, self.k_out)
        fetch = tf.minimum(self.k_out + tf.shape(exclude_item_ids)[1], self.num_items)
        # Partition of every block (the sentinel block, all padding, gets the last one).
        blocks = tf.range(self.num_blocks + 1, dtype=tf.int64)
        block_partition = tf.minimum(tf.searchsorted(self.block_offsets, blocks, side="right") - 1,
                                     self.num_partitions - 1)  # [NB + 1]
        centroid_scores = tf.matmul(queries, self.centroids, transpose_b=True)  # [B, P]
        block_bias = tf.gather(centroid_scores, block_partition, axis=1)  # [B, NB + 1]
        scores, slots = quantize.scan_top_k(queries, self.codes, self.scales, fetch, SCAN_BLOCKS_PER_STEP,
                                            block_bias=block_bias)
        rows = tf.gather(tf.reshape(self.block_rows, [-1]), slots)
        top_scores, top_ids, _ = base.filter_excluded(scores, rows, self.item_ids, exclude_item_ids, self.k_out)
        return top_scores, top_ids

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the index, for reports."""
        return base.params_jsonable(
            {
                "kind": self.kind,
                "k": self.k,
                "num_items": self.num_items,
                "dim": self.dim,
                "quantization": self.quantization,
                "num_partitions": self.num_partitions,
                "nprobe": self.nprobe,
                "target_recall": self.target_recall,
                "calibrated_recall": self.calibrated_recall,
                "seed": self.seed,
                "kmeans_iterations": KMEANS_ITERATIONS,
                "max_partition_size": self.max_partition_size,
                "block_size": BLOCK_SIZE,
                "num_blocks": self.num_blocks,
                "empty_partitions": self.empty_partitions,
                "rescored_per_result": RESCORE_FACTOR if self.quantization == "none" else None,
            }
        )


def _recall(found_ids: np.ndarray, truth_ids: np.ndarray) -> float:
    """Mean fraction of each row of ``truth_ids`` [Q, k] found in the same row of ``found_ids`` [Q, k']."""
    return float(np.mean([len(set(t) & set(f)) / len(t) for f, t in zip(found_ids, truth_ids)]))
