"""Brute force over int8 item embeddings: under a third of the memory, every item scored.

Usage::

    index = BruteForceInt8Index(item_embeddings, item_ids, k=10)   # float32 [N, d], str [N]
    scores, ids = index.search(query_embeddings, exclude_item_ids=seen)

The catalog is sorted by each item's largest absolute value and cut into
chunks of up to ``CHUNK_ITEMS`` items; every chunk has one scale (its largest
absolute value / 127) and keeps int8 codes, stored transposed (``[chunks, d,
C]``: the product with the queries reads C contiguous columns). Items of a
chunk have nearly the same range (they are neighbours in the sorted order),
so one scale per chunk loses little, and it folds into the queries: a step is
a cast of the chunk's codes, one MatMul of the scaled queries with them, and
the chunk's top ``k + e`` (no pass over the scores to scale them). The
chunks' candidates are merged at the end; ``item_ids`` is kept in the sorted
order, so a storage slot is also the row of its id. Scores are the dot
products with the items' int8 reconstruction (not the float32 originals:
those are not kept), so near-ties can swap; ``tfrec.index.recall_against_exact``
measures how often. Core TF ops only: stock TensorFlow Serving runs it.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfrec.index.base as base

# Items per scoring step (measured at 1M x 64: 16k-128k all beat float32 brute force, 64k the most evenly).
CHUNK_ITEMS = 65536
# Chunks are a whole number of these items wide (small catalogs: one small chunk).
_CHUNK_ALIGN = 64
# Rows read at a time at build time (bounds float temporaries).
_ROWS_PER_STEP = 65536


class BruteForceInt8Index(tf.Module):
    """Top-k by dot product with every item's int8 reconstruction.

    Args:
      item_embeddings: float32 ``[num_items, dim]``.
      item_ids: ``[num_items]`` unique, non-empty strings.
      k: results per query; searches return ``k' = min(k, num_items)``.
      name: ``tf.Module`` name.
    """

    kind = "brute_force_int8"

    def __init__(
        self,
        item_embeddings: np.ndarray | tf.Tensor,
        item_ids: np.ndarray | tf.Tensor | Sequence[str],
        k: int,
        name: str | None = None,
    ):
        super().__init__(name=name)
        embeddings, ids = base.init_catalog(self, item_embeddings, item_ids, k)
        # Equal chunks of at most CHUNK_ITEMS: padding stays under _CHUNK_ALIGN items per chunk.
        chunks = -(-self.num_items // CHUNK_ITEMS)
        self.chunk_items = -(-self.num_items // (chunks * _CHUNK_ALIGN)) * _CHUNK_ALIGN
        order = np.argsort(_max_abs(embeddings), kind="stable")  # [N] smallest range first
        codes, scales = _chunked_codes(embeddings, order, self.chunk_items)
        del embeddings
        # [chunks, dim, C] int8 (zero padding past the last item) and [chunks] float32.
        self.codes = tf.Variable(codes, trainable=False, name="item_codes")
        self.scales = tf.Variable(scales, trainable=False, name="chunk_scales")
        # [N] in storage order: slot s holds the item whose id is item_ids[s].
        self.item_ids = tf.Variable(ids[order], dtype=tf.string, trainable=False, name="item_ids")

    def search(
        self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k items by dot product with their int8 reconstruction.

        Args:
          query_embeddings: float32 ``[batch, dim]``.
          exclude_item_ids: optional string ``[batch, e]`` padded with ``""``; never returned.

        Returns:
          ``(scores float32 [batch, k'], item_ids string [batch, k'])``, best
          first; trailing ``-inf`` / ``""`` only if exclusion leaves fewer than
          ``k'`` items.
        """
        queries, exclude_item_ids = base.search_inputs(query_embeddings, exclude_item_ids)
        fetch = tf.minimum(self.k_out + tf.shape(exclude_item_ids)[1], self.num_items)
        scores, slots = self._scan(queries, fetch)
        rows = tf.minimum(slots, self.num_items - 1)  # slots past the catalog only carry -inf scores
        scores, ids, _ = base.filter_excluded(scores, rows, self.item_ids, exclude_item_ids, self.k_out)
        return base.with_static_k(scores, ids, self.k_out)

    def _scan(self, queries: tf.Tensor, fetch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top ``fetch`` storage slots over every chunk: ``(scores float32 [B, fetch], slots int32 [B, fetch])``."""
        steps, width = int(self.codes.shape[0]), self.chunk_items
        in_last = self.num_items - (steps - 1) * width  # real items of the last chunk; the rest is padding
        batch = tf.shape(queries)[0]

        def step(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            scores = tf.matmul(queries * self.scales[i], tf.cast(self.codes[i], tf.float32))  # [B, C]
            if in_last < width:  # padding scores 0: -inf in the last chunk, the only one holding any
                scores = tf.cond(i == steps - 1, lambda: tf.where(tf.range(width) < in_last, scores, base.NEG_INF),
                                 lambda: scores)
            values, columns = base.chunked_top_k(scores, tf.minimum(fetch, width))
            return values, columns, i * width

        return base.best_over_steps(step, steps, fetch, batch)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the index, for reports."""
        return base.params_jsonable({"kind": self.kind, "k": self.k, "num_items": self.num_items,
                                     "dim": self.dim, "quantization": "int8", "chunk_items": self.chunk_items})


def _max_abs(embeddings: np.ndarray) -> np.ndarray:
    """Largest absolute value of each row of ``embeddings`` ``[N, d]``: float32 ``[N]``."""
    return np.concatenate([np.abs(np.asarray(embeddings[start : start + _ROWS_PER_STEP])).max(axis=1)
                           for start in range(0, embeddings.shape[0], _ROWS_PER_STEP)])


def _chunked_codes(embeddings: np.ndarray, order: np.ndarray, chunk_items: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes ``[chunks, d, C]`` of the rows in ``order`` (zero-padded) and one scale per chunk ``[chunks]``.

    A chunk's scale is its largest absolute value / 127 (at least the smallest
    positive float32), so its rows are ``~ codes * scale``.
    """
    num_items, dim = embeddings.shape
    chunks = -(-num_items // chunk_items)
    codes = np.zeros((chunks, dim, chunk_items), dtype=np.int8)
    scales = np.zeros(chunks, dtype=np.float32)
    for chunk in range(chunks):
        rows = np.asarray(embeddings[order[chunk * chunk_items : (chunk + 1) * chunk_items]], dtype=np.float32)
        scale = max(float(np.abs(rows).max()) / 127.0, float(np.finfo(np.float32).tiny))
        codes[chunk, :, : len(rows)] = np.clip(np.rint(rows / scale), -127, 127).T
        scales[chunk] = scale
    return codes, scales
