"""Exact retrieval: score every item with one matmul, keep the top k.

Usage::

    import tfrec
    from tfrec.index.brute_force import BruteForceIndex

    index = BruteForceIndex(item_embeddings, item_ids, k=10)   # float32 [N, d], str [N]
    scores, ids = index.search(query_embeddings)               # [B, d] -> [B, k'], [B, k']
    scores, ids = index.search(query_embeddings, exclude_item_ids=seen)  # seen: str [B, e], "" padded

Cost per query is O(N * d); this is the reference the approximate indexes are
measured against, and the fallback for catalogs too small to need them. Built
only from core TF ops, so stock TensorFlow Serving runs it.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfrec.index.base as base


class BruteForceIndex(tf.Module):
    """Exact dot-product top-k over a fixed catalog.

    Args:
      item_embeddings: float32 ``[num_items, dim]``.
      item_ids: ``[num_items]`` unique, non-empty strings.
      k: results per query; searches return ``k' = min(k, num_items)``.
      name: ``tf.Module`` name.
    """

    kind = "brute_force"

    def __init__(
        self,
        item_embeddings: np.ndarray | tf.Tensor,
        item_ids: np.ndarray | tf.Tensor | Sequence[str],
        k: int,
        name: str | None = None,
    ):
        super().__init__(name=name)
        embeddings, ids = base.init_catalog(self, item_embeddings, item_ids, k)
        # Variables rather than constants: they land in the SavedModel's
        # variables/ checkpoint instead of the graph proto (2 GB limit).
        self.item_embeddings = tf.Variable(embeddings, trainable=False, name="item_embeddings")
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")

    def search(
        self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k items by dot product.

        Args:
          query_embeddings: float32 ``[batch, dim]``.
          exclude_item_ids: optional string ``[batch, e]`` padded with ``""``
            (``e`` may be 0); these ids are never returned.

        Returns:
          ``(scores float32 [batch, k'], item_ids string [batch, k'])`` with
          ``k' = min(k, num_items)``, best first. Only if exclusion leaves
          fewer than ``k'`` items are trailing slots padded with score
          ``-inf`` and id ``""``.
        """
        query_embeddings, exclude_item_ids = base.search_inputs(query_embeddings, exclude_item_ids)
        scores, ids = base.exact_search(query_embeddings, self.item_embeddings, self.item_ids, exclude_item_ids,
                                        self.k_out)
        return base.with_static_k(scores, ids, self.k_out)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the index, for reports."""
        return base.params_jsonable(
            {"kind": self.kind, "k": self.k, "num_items": self.num_items, "dim": self.dim}
        )
