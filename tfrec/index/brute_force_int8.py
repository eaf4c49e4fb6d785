"""Brute force over int8 item embeddings: a quarter of the memory, every item scored.

Usage::

    index = BruteForceInt8Index(item_embeddings, item_ids, k=10)   # float32 [N, d], str [N]
    scores, ids = index.search(query_embeddings, exclude_item_ids=seen)

The catalog is kept as per-item int8 codes and scales (``tfrec.index.quantize``),
in chunks of up to ``CHUNK_ITEMS`` items stored transposed (``[chunks, d, C]``:
the product with the queries reads C contiguous columns). A search casts one
chunk at a time to float32, scores it and keeps that chunk's top ``k + e``;
the chunks' candidates are merged at the end. Scores are the dot products with
the items' int8 reconstruction (not the float32 originals: those are not
kept), so near-ties can swap; ``tfrec.index.recall_against_exact`` measures
how often. Core TF ops only: stock TensorFlow Serving runs it.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfrec.index.base as base
import tfrec.index.quantize as quantize

# Items per scoring step (measured at 1M x 64: 16k-128k all beat float32 brute force, 64k the most evenly).
CHUNK_ITEMS = 65536
# Chunks are a whole number of these items wide (small catalogs: one small chunk).
_CHUNK_ALIGN = 64


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
        codes, scales = _chunked_codes(embeddings, self.chunk_items)
        del embeddings
        # [chunks, dim, C] int8 and [chunks, C] float32 (scale 0 = padding past the last item).
        self.codes = tf.Variable(codes, trainable=False, name="item_codes")
        self.scales = tf.Variable(scales, trainable=False, name="item_scales")
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")

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
        scores, slots = quantize.scan_top_k(queries, self.codes, self.scales, fetch, blocks_per_step=1,
                                            padding_in_last_step=True)
        rows = tf.minimum(slots, self.num_items - 1)  # slots past the catalog only carry -inf scores
        scores, ids, _ = base.filter_excluded(scores, rows, self.item_ids, exclude_item_ids, self.k_out)
        return base.with_static_k(scores, ids, self.k_out)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the index, for reports."""
        return base.params_jsonable({"kind": self.kind, "k": self.k, "num_items": self.num_items,
                                     "dim": self.dim, "quantization": "int8", "chunk_items": self.chunk_items})


def _chunked_codes(embeddings: np.ndarray, chunk_items: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes ``[chunks, d, C]`` (catalog order, zero-padded) and scales ``[chunks, C]`` (0 = padding)."""
    num_items, dim = embeddings.shape
    chunks = -(-num_items // chunk_items)
    codes = np.zeros((chunks, dim, chunk_items), dtype=np.int8)
    scales = np.zeros((chunks, chunk_items), dtype=np.float32)
    for chunk in range(chunks):
        rows = embeddings[chunk * chunk_items : (chunk + 1) * chunk_items]
        chunk_codes, chunk_scales = quantize.quantize_rows(rows)
        codes[chunk, :, : len(rows)] = chunk_codes.T
        scales[chunk, : len(rows)] = chunk_scales
    return codes, scales
