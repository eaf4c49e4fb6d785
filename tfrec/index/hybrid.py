"""Hybrid search around any index: its dense candidates joined with BM25's, re-scored by one fused score.

For a query (embedding ``q`` [d] and text), the candidates are the wrapped
index's top k (its dense candidates, exclusions applied), the top k items by
in-graph BM25 (:class:`tfrec.lexical_graph.LexicalScorer`; only items some
query word reaches) and the first k + e items of the tie order (what BM25 puts
next when its words reach fewer than k items), BM25's taking k + e too (e =
exclusions, dropped from the union). Each candidate gets its exact
dense score ``q . item`` and its BM25 score, and one of two fusions
(:data:`FUSIONS`) mixes them with the lexical share ``weight``:

* ``minmax_weighted_sum``: both scores min-max normalised over the query's
  candidates, ``(1 - weight) * dense_norm + weight * bm25_norm``;
* ``reciprocal_rank``: ``(1 - weight) / (60 + dense rank) + weight / (60 + bm25
  rank)``, ranks among the candidates (an item no query word reaches adds 0).

Equal fused scores go by the lexical scorer's tie order (e.g. training
popularity; default: catalog order), so ``weight = 1`` returns exactly the
``bm25`` baseline's top k (BM25, ties by the same order) and ``weight = 0`` the
dense index's. Nothing costs [batch, num_items] beyond the wrapped index: the
lexical side touches the query words' postings and the 3k + 2e candidates. The
same code serves (inside the SavedModel, every index kind: brute force, IVF,
ScaNN) and evaluates (:mod:`tfrec.hybrid`), so what validation chose is what
the export serves.

Usage::

    from tfrec.index.hybrid import HybridIndex
    from tfrec.lexical import BM25
    from tfrec.lexical_graph import LexicalScorer

    hybrid = HybridIndex(index, LexicalScorer(BM25(texts)), item_embeddings, item_ids, weight=0.3)
    scores, ids = hybrid.search_hybrid(query_embeddings, query_text, exclude_item_ids)  # [B, k], [B, k]
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any

import numpy as np
import tensorflow as tf

import tfrec.index.base as base
from tfrec.lexical_graph import LexicalScorer

FUSIONS = ("minmax_weighted_sum", "reciprocal_rank")
RRF_K = 60.0  # reciprocal rank fusion's constant (Cormack et al. 2009)
_LAST = np.iinfo(np.int64).max  # a sorted key list's sentinel: no key equals it


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


def rank_among(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """float32 [batch, c]: 1 + how many valid candidates of the row score higher (equal scores share a rank)."""
    ascending = tf.sort(tf.where(valid, scores, -np.inf), axis=1)  # a row sorted once, not [batch, c, c] pairs
    at_most = tf.searchsorted(ascending, scores, side="right", out_type=tf.int32)  # entries <= the score
    return 1.0 + tf.cast(tf.shape(scores)[1] - at_most, tf.float32)


def fusion_terms(dense: tf.Tensor, lexical: tf.Tensor, valid: tf.Tensor,
                 fusion: str = FUSIONS[0]) -> tuple[tf.Tensor, tf.Tensor]:
    """The weight-free parts of :func:`fuse`: float32 [batch, c] each, for one fusion.

    ``minmax_weighted_sum``: (dense min-max, lexical min-max); ``reciprocal_rank``: (60 + dense rank,
    1 / (60 + lexical rank), 0 where no query word reaches). Evaluation computes them once for every weight.

    Args:
      dense, lexical: float32 [batch, c] raw scores of the candidates (lexical >= 0); valid: bool [batch, c].
    """
    if fusion == "reciprocal_rank":
        reached = tf.logical_and(valid, lexical > 0)
        return RRF_K + rank_among(dense, valid), tf.where(reached, 1.0 / (RRF_K + rank_among(lexical, reached)), 0.0)
    if fusion == "minmax_weighted_sum":
        return minmax(dense, valid), minmax(lexical, valid)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")


def combine(terms: tuple[tf.Tensor, tf.Tensor], valid: tf.Tensor, weight: float | tf.Tensor,
            fusion: str = FUSIONS[0]) -> tf.Tensor:
    """:func:`fusion_terms` mixed with the lexical share ``weight``: float32 [batch, c] (``-inf`` where not valid).

    ``weight`` may also be float32 [w, 1, 1] (then [w, batch, c]: every weight at once).
    """
    weight = tf.cast(weight, tf.float32)
    dense_term, lexical_term = terms
    if fusion == "reciprocal_rank":
        fused = (1.0 - weight) / dense_term + weight * lexical_term
    else:
        fused = (1.0 - weight) * dense_term + weight * lexical_term
    return tf.where(valid, fused, tf.fill(tf.shape(fused), -np.inf))


def fuse(dense: tf.Tensor, lexical: tf.Tensor, valid: tf.Tensor, weight: float | tf.Tensor,
         fusion: str = FUSIONS[0]) -> tf.Tensor:
    """The fused score of each candidate: float32 [batch, c] (``-inf`` where not ``valid``).

    Args:
      dense, lexical: float32 [batch, c] raw scores of the candidates (lexical >= 0); valid: bool [batch, c].
      weight: the lexical side's share in [0, 1]; fusion: one of :data:`FUSIONS`.
    """
    return combine(fusion_terms(dense, lexical, valid, fusion), valid, weight, fusion)


def sorted_lookup(keys: tf.Tensor, values: tf.Tensor, wanted: tf.Tensor, default) -> tuple[tf.Tensor, tf.Tensor]:
    """``values`` at ``wanted``'s positions in the ascending ``keys`` [u]: (found bool, value), shaped as ``wanted``."""
    keys = tf.concat([keys, tf.constant([_LAST], tf.int64)], axis=0)
    values = tf.concat([values, tf.fill([1], tf.cast(default, values.dtype))], axis=0)
    flat = tf.reshape(wanted, [-1])
    at = tf.searchsorted(keys, flat, out_type=tf.int64)
    found = tf.equal(tf.gather(keys, at), flat)
    value = tf.where(found, tf.gather(values, at), tf.cast(default, values.dtype))
    return tf.reshape(found, tf.shape(wanted)), tf.reshape(value, tf.shape(wanted))


class HybridIndex(tf.Module):
    """Fused dense + BM25 retrieval around ``index`` (brute force, IVF, ScaNN, ...).

    Args:
      index: a :mod:`tfrec.index` index over the catalog (``search(q, exclude) -> (scores, ids)``).
      lexical: :class:`LexicalScorer` over the same catalog rows.
      item_embeddings: float32 [num_items, d], the catalog rows (exact dense re-scoring).
      item_ids: [num_items] strings, the catalog rows' ids (the index's ids).
      weight: the lexical share of the fused score, in [0, 1].
      fusion: one of :data:`FUSIONS`.
    """

    hybrid = True

    def __init__(self, index, lexical: LexicalScorer, item_embeddings, item_ids, weight: float,
                 fusion: str = FUSIONS[0], name: str | None = None):
        super().__init__(name=name)
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
        self.index, self.lexical, self.weight, self.fusion = index, lexical, float(weight), fusion
        self.kind, self.k = index.kind, index.k
        embeddings = base.as_embeddings(item_embeddings)
        ids = base.as_item_ids(item_ids, embeddings.shape[0])
        self.num_items, self.dim = embeddings.shape
        self.k_out = min(self.k, self.num_items)
        stored = getattr(index, "item_embeddings", None)
        # Re-scoring needs float32 rows: the wrapped index's own when it keeps them, else a copy.
        shared = isinstance(stored, tf.Variable) and stored.dtype == tf.float32 and stored.shape == embeddings.shape
        self.item_embeddings = stored if shared else tf.Variable(embeddings, trainable=False,
                                                                 name="hybrid_item_embeddings")
        # Once a variable is gathered from (ResourceGather), TF copies it whole on every full read (copy-on-read
        # mode): where the wrapped index reads all rows (brute force's matmul), gather from that read instead.
        self.gather_from_value = shared and index.kind == "brute_force"
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="hybrid_item_ids")
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                                tf.range(self.num_items, dtype=tf.int64)), default_value=-1)

    def search(self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor | None = None):
        """The wrapped index's dense search (for callers without query text)."""
        return self.index.search(query_embeddings, exclude_item_ids)

    def _lexical_top_k(self, keys: tf.Tensor, scores: tf.Tensor, batch: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        """Each query's k best reached items by BM25, ties by tie order: int64 [batch, k] positions (n: none).

        Args:
          keys: int64 [u] ascending ``query * num_items + position``; scores: float32 [u] > 0;
          batch, k: int64 scalars.
        """
        n = self.num_items
        splits = tf.searchsorted(keys // n, tf.range(batch + 1), out_type=tf.int64)
        pad = tf.stack([tf.zeros([2], tf.int64), tf.stack([0, k])])  # at least k columns; score 0 = nothing there
        grid = tf.pad(tf.RaggedTensor.from_row_splits(scores, splits, validate=False).to_tensor(), pad)
        positions = tf.pad(tf.RaggedTensor.from_row_splits(keys % n, splits, validate=False).to_tensor(), pad)
        top, at = tf.math.top_k(grid, k=tf.cast(k, tf.int32))  # equal scores: the smaller column, the earlier item
        return tf.where(top > 0, tf.gather(positions, at, batch_dims=1), n)

    def candidates(self, query_embeddings: tf.Tensor, query_text: tf.Tensor, exclude_item_ids: tf.Tensor):
        """The dense top k, the lexical top k + e and the first k + e of the tie order, with both raw scores.

        Args:
          query_embeddings: float32 [batch, d]; query_text: string [batch];
          exclude_item_ids: string [batch, e], "" padded.
        Returns:
          (rows int64 [batch, c], dense float32 [batch, c], lexical float32 [batch, c], valid bool [batch, c]),
          c = 3k + 2e; each row's columns in tie order (a row found twice is valid once, excluded rows and -1,
          nothing found, are not valid), so equal fused scores go to the earlier column.
        """
        query_embeddings, exclude_item_ids = base.search_inputs(query_embeddings, exclude_item_ids)
        n, batch = self.num_items, tf.shape(query_embeddings, out_type=tf.int64)[0]
        query_row = tf.range(batch)[:, None]
        position_of, row_at = self.lexical.position, self.lexical.by_position

        def positions(rows):  # catalog rows -> tie positions, -1 -> n (after every item)
            return tf.where(rows >= 0, tf.gather(position_of, tf.maximum(rows, 0)), n)

        _, dense_ids = self.index.search(query_embeddings, exclude_item_ids)
        excluded = positions(self.rows.lookup(exclude_item_ids))  # "" padding and unknown ids -> n
        # Padding keys -1, never a candidate's (query_row * n + n would be the next query's first item).
        excluded_keys = tf.sort(tf.reshape(tf.where(excluded < n, query_row * n + excluded, -1), [-1]))
        keys, scores = self.lexical.reached(query_text)
        # k + e from BM25 and from the tie order: at least k of each are not excluded (they are dropped below).
        # A query keeps k + its own exclusions of them, so "" padding of exclude_item_ids changes nothing.
        fill = tf.minimum(self.k_out + tf.shape(exclude_item_ids, out_type=tf.int64)[1], n)
        own = self.k_out + tf.reduce_sum(tf.cast(tf.not_equal(exclude_item_ids, ""), tf.int64), axis=1)
        beyond = tf.range(fill)[None, :] >= own[:, None]  # [batch, fill]
        nothing = tf.constant(n, tf.int64)
        lexical_top = tf.where(beyond, nothing, self._lexical_top_k(keys, scores, batch, fill))
        first = tf.where(beyond, nothing, tf.tile(tf.range(fill)[None], tf.stack([batch, 1])))
        position = tf.sort(tf.concat([positions(self.rows.lookup(dense_ids)), lexical_top, first], axis=1), axis=1)
        candidate_keys = query_row * n + position
        repeated = tf.pad(tf.equal(position[:, 1:], position[:, :-1]), [[0, 0], [1, 0]])
        valid = tf.logical_and(position < n, tf.logical_not(repeated))
        valid = tf.logical_and(valid, tf.logical_not(sorted_lookup(excluded_keys, excluded_keys,
                                                                   candidate_keys, -1)[0]))
        rows = tf.where(position < n, tf.gather(row_at, tf.minimum(position, n - 1)), -1)
        table = self.item_embeddings.value() if self.gather_from_value else self.item_embeddings
        dense = tf.reduce_sum(tf.gather(table, tf.maximum(rows, 0)) * query_embeddings[:, None, :], axis=2)
        lexical = sorted_lookup(keys, scores, candidate_keys, 0.0)[1]
        return rows, dense, lexical, valid

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
        fused = fuse(dense, lexical, valid, self.weight, self.fusion)
        scores, order = tf.math.top_k(fused, k=self.k_out)  # equal scores: the earlier column (tie order)
        picked = tf.gather(rows, order, batch_dims=1)
        ids = tf.where(tf.math.is_finite(scores), tf.gather(self.item_ids, tf.maximum(picked, 0)), "")
        return base.with_static_k(scores, ids, self.k_out)

    def params(self) -> dict[str, Any]:
        """The wrapped index's description plus the fusion's."""
        return {**self.index.params(), "hybrid": {"fusion": self.fusion, "lexical_weight": self.weight,
                                                  "lexical_candidates": self.k_out}}
