"""Hybrid search around any index: its dense candidates joined with BM25's, re-scored by one fused score.

For a query (embedding ``q`` [d] and text), the candidates are the wrapped
index's top k (its dense candidates, exclusions applied) together with the
top k items by in-graph BM25 (:class:`tfrec.lexical_graph.LexicalScorer`; only
items some query word reaches). Each candidate gets its exact dense score
``q . item`` and its BM25 score; both are min-max normalised over the query's
candidates and mixed:

    fused = (1 - weight) * dense_norm + weight * bm25_norm

so ``weight = 0`` orders the dense candidates as the dense index does and
``weight = 1`` puts BM25's order first. The same code serves (inside the
SavedModel, every index kind: brute force, IVF, ScaNN) and evaluates
(:mod:`tfrec.hybrid`), so what validation chose is what the export serves.

Usage::

    from tfrec.index.hybrid import HybridIndex
    from tfrec.lexical import BM25
    from tfrec.lexical_graph import LexicalScorer

    hybrid = HybridIndex(index, LexicalScorer(BM25(texts)), item_embeddings, weight=0.3)
    scores, ids = hybrid.search_hybrid(query_embeddings, query_text, exclude_item_ids)  # [B, k], [B, k]
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any

import numpy as np
import tensorflow as tf

import tfrec.index.base as base
from tfrec.lexical_graph import LexicalScorer


def minmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Per row, ``(s - min) / (max - min)`` over the valid entries (0 where invalid or all equal).

    Args:
      scores: float32 [batch, c]; valid: bool [batch, c].
    Returns:
      float32 [batch, c] in [0, 1].
    """
    big = tf.constant(np.finfo(np.float32).max, tf.float32)
    low = tf.reduce_min(tf.where(valid, scores, big), axis=1, keepdims=True)
    high = tf.reduce_max(tf.where(valid, scores, -big), axis=1, keepdims=True)
    spread = high - low
    out = tf.math.divide_no_nan(scores - low, tf.where(spread > 0, spread, tf.zeros_like(spread)))
    return tf.where(valid, out, tf.zeros_like(out))


def fuse(dense: tf.Tensor, lexical: tf.Tensor, valid: tf.Tensor, weight: float | tf.Tensor) -> tf.Tensor:
    """The fused score of each candidate: float32 [batch, c] (``-inf`` where not ``valid``).

    Args:
      dense, lexical: float32 [batch, c] raw scores of the candidates; valid: bool [batch, c].
      weight: the lexical side's share in [0, 1].
    """
    weight = tf.cast(weight, tf.float32)
    fused = (1.0 - weight) * minmax(dense, valid) + weight * minmax(lexical, valid)
    return tf.where(valid, fused, tf.fill(tf.shape(fused), -np.inf))


def first_occurrence(rows: tf.Tensor) -> tf.Tensor:
    """bool [batch, c]: ``rows`` [batch, c] int64 is >= 0 and not equal to an earlier entry of its row."""
    c = tf.shape(rows)[1]
    same = tf.equal(rows[:, :, None], rows[:, None, :])  # [batch, c, c]
    earlier = tf.linalg.band_part(tf.ones(tf.stack([c, c]), tf.bool), -1, 0)  # j <= i
    earlier = tf.logical_and(earlier, tf.logical_not(tf.eye(c, dtype=tf.bool)))  # j < i
    repeated = tf.reduce_any(tf.logical_and(same, earlier[None]), axis=2)
    return tf.logical_and(rows >= 0, tf.logical_not(repeated))


class HybridIndex(tf.Module):
    """Fused dense + BM25 retrieval around ``index`` (brute force, IVF, ScaNN, ...).

    Args:
      index: a :mod:`tfrec.index` index over the catalog (``search(q, exclude) -> (scores, ids)``).
      lexical: :class:`LexicalScorer` over the same catalog rows.
      item_embeddings: float32 [num_items, d], the catalog rows (exact dense re-scoring).
      item_ids: [num_items] strings, the catalog rows' ids (the index's ids).
      weight: the lexical share of the fused score, in [0, 1].
    """

    hybrid = True

    def __init__(self, index, lexical: LexicalScorer, item_embeddings, item_ids, weight: float,
                 name: str | None = None):
        super().__init__(name=name)
        self.index, self.lexical, self.weight = index, lexical, float(weight)
        self.kind, self.k = index.kind, index.k
        embeddings = base.as_embeddings(item_embeddings)
        ids = base.as_item_ids(item_ids, embeddings.shape[0])
        self.num_items, self.dim = embeddings.shape
        self.k_out = min(self.k, self.num_items)
        stored = getattr(index, "item_embeddings", None)
        # Re-scoring needs float32 rows: the wrapped index's own when it keeps them, else a copy.
        if isinstance(stored, tf.Variable) and stored.dtype == tf.float32 and stored.shape == embeddings.shape:
            self.item_embeddings = stored
        else:
            self.item_embeddings = tf.Variable(embeddings, trainable=False, name="hybrid_item_embeddings")
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="hybrid_item_ids")
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                                tf.range(self.num_items, dtype=tf.int64)), default_value=-1)

    def search(self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor | None = None):
        """The wrapped index's dense search (for callers without query text)."""
        return self.index.search(query_embeddings, exclude_item_ids)

    def candidates(self, query_embeddings: tf.Tensor, query_text: tf.Tensor, exclude_item_ids: tf.Tensor):
        """The union of the dense and the lexical top k, with both raw scores.

        Args:
          query_embeddings: float32 [batch, d]; query_text: string [batch];
          exclude_item_ids: string [batch, e], "" padded.
        Returns:
          (rows int64 [batch, c], dense float32 [batch, c], lexical float32 [batch, c], valid bool [batch, c]);
          ``rows`` is -1 where nothing was found; a row found by both sides is valid once.
        """
        query_embeddings, exclude_item_ids = base.search_inputs(query_embeddings, exclude_item_ids)
        _, dense_ids = self.index.search(query_embeddings, exclude_item_ids)
        dense_rows = self.rows.lookup(dense_ids)  # "" padding -> -1
        lexical = self.lexical.scores(query_text)  # [batch, num_items]
        excluded = self.rows.lookup(exclude_item_ids)
        where = tf.where(excluded >= 0)  # [m, 2]: (query, position in its exclusion list)
        hits = tf.stack([where[:, 0], tf.gather_nd(excluded, where)], axis=1)
        lexical = tf.tensor_scatter_nd_update(lexical, hits, tf.fill(tf.shape(hits)[:1], -1.0))
        top_scores, top_rows = tf.math.top_k(lexical, k=self.k_out)
        lexical_rows = tf.where(top_scores > 0, tf.cast(top_rows, tf.int64), -tf.ones_like(top_rows, tf.int64))
        rows = tf.concat([dense_rows, lexical_rows], axis=1)
        valid = first_occurrence(rows)
        safe = tf.maximum(rows, 0)
        dense = tf.reduce_sum(tf.gather(self.item_embeddings, safe) * query_embeddings[:, None, :], axis=2)
        lexical_scores = tf.maximum(tf.gather(lexical, safe, batch_dims=1), 0.0)
        return rows, dense, lexical_scores, valid

    def search_hybrid(self, query_embeddings: tf.Tensor, query_text: tf.Tensor,
                      exclude_item_ids: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Top k by the fused score.

        Args:
          query_embeddings: float32 [batch, d]; query_text: string [batch] ("" = dense only);
          exclude_item_ids: optional string [batch, e], "" padded; never returned.
        Returns:
          (fused scores float32 [batch, k'], item_ids string [batch, k']), best first; ``-inf`` / "" pad.
        """
        if exclude_item_ids is None:
            exclude_item_ids = base.empty_exclusion(query_embeddings)
        rows, dense, lexical, valid = self.candidates(query_embeddings, query_text, exclude_item_ids)
        scores, order = tf.math.top_k(fuse(dense, lexical, valid, self.weight), k=self.k_out)
        picked = tf.gather(rows, order, batch_dims=1)
        ids = tf.where(tf.math.is_finite(scores), tf.gather(self.item_ids, tf.maximum(picked, 0)), "")
        return base.with_static_k(scores, ids, self.k_out)

    def params(self) -> dict[str, Any]:
        """The wrapped index's description plus the fusion's."""
        return {**self.index.params(), "hybrid": {"fusion": "minmax_weighted_sum", "lexical_weight": self.weight,
                                                  "lexical_candidates": self.k_out}}
