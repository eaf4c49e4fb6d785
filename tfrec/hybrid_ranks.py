"""The targets' ranks under every fused score, for a whole split at once: what :mod:`tfrec.hybrid` chooses from.

The candidates and scores are those :meth:`tfrec.index.hybrid.HybridIndex.candidates`
serves (the dense top k, BM25's top k + e, the first k + e of the tie order,
exclusions dropped), built without a served batch's strings:

* the dense top k of a chunk of queries: one matmul over the catalog, k + e
  fetched, each query's own exclusions dropped (as the served brute force
  over-fetches and filters);
* BM25: the query words of the whole split are looked up in the graph (the
  served tokenizer), then each query's postings are summed into one float32
  row over the tie order, in the query's word order (the served sums), as the
  ``bm25`` baseline scores a query; its top k + e, equal scores by tie order,
  is read off that row, and so are the BM25 scores of the other candidates;
* the fusion: :func:`tfrec.index.hybrid.fusion_terms` once per chunk and fusion,
  :func:`tfrec.index.hybrid.combine` for every weight at once, the target's rank
  counted in the graph.

Only when two items have exactly the same dense score at the k-th place may
the dense top k keep another of them than a served batch would.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec.index import base
from tfrec.index.hybrid import FUSIONS, HybridIndex, combine, fusion_terms
from tfrec.lexical_graph import graph_words
from tfrec.progress import Progress

CHUNK = 256  # queries per dense top k ([CHUNK, num_items] scores) and per fused pass


def query_terms(index: HybridIndex, query_text: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The served tokenizer's term ids: (int64 [words], -1 for words the catalog lacks; row splits int64 [n + 1])."""
    words = graph_words(tf.constant(list(query_text), tf.string))
    return index.lexical.vocabulary.lookup(words.flat_values).numpy(), words.row_splits.numpy()


def _dense_fetch(items: tf.Tensor):
    """The served brute force's over-fetch for a chunk (``items`` float32 [num_items, d], static as the index's)."""
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([], tf.int32)])
    def top(queries, fetch):
        """queries [b, d] -> rows int64 [b, fetch], best first (k + the chunk's most exclusions: k survive them)."""
        return tf.cast(base.top_k(tf.matmul(queries, items, transpose_b=True), fetch)[1], tf.int64)
    return top


def _ranks_graph(fusion: str):
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)])
    def ranks(queries, items, rows, lexical, target_column, weights):
        """1 + the valid candidates before the target (fused score, ties: the earlier column): int64 [b, w].

        Args:
          queries [b, d]; items [num_items, d]; rows int64 [b, c] candidates in tie order, -1 = none;
          lexical [b, c] their BM25; target_column int64 [b] (any value where the target is not a candidate).
        """
        valid = rows >= 0
        dense = tf.reduce_sum(tf.gather(items, tf.maximum(rows, 0)) * queries[:, None, :], axis=2)  # as served
        dense_term, lexical_term = fusion_terms(dense, lexical, valid, fusion)
        fused = combine((dense_term[:, None, :], lexical_term[:, None, :]), valid[:, None, :],
                        weights[None, :, None], fusion)  # [b, w, c]
        mine = tf.gather(fused, target_column[:, None], axis=2, batch_dims=1)  # [b, w, 1]
        earlier = tf.range(tf.shape(rows, out_type=tf.int64)[1])[None, None, :] < target_column[:, None, None]
        ahead = tf.logical_or(fused > mine, tf.logical_and(fused == mine, earlier))
        return 1 + tf.reduce_sum(tf.cast(ahead, tf.int64), axis=2)
    return ranks


class LexicalRows:
    """Each query's BM25 over the catalog, one query at a time, from the served scorer's postings.

    Args:
      index: the :class:`HybridIndex` whose ``lexical`` scorer (postings, tie order) is read.
    """

    def __init__(self, index: HybridIndex):
        lexical = index.lexical
        self.indptr, self.positions = lexical.indptr.numpy(), lexical.positions.numpy()
        self.weights = lexical.weights.numpy()  # float32, as served
        self.n = lexical.num_items
        self.row = np.zeros(self.n, np.float32)  # one query's scores by tie position, zero again after each query
        self.seen = np.full(self.n, -1, np.int64)

    def add(self, terms: np.ndarray, query: int) -> np.ndarray:
        """Sums the query's postings (word order); returns the positions reached, each once: int64 [r]."""
        reached = []
        for t in terms[terms >= 0]:
            p = self.positions[self.indptr[t]:self.indptr[t + 1]]
            self.row[p] += self.weights[self.indptr[t]:self.indptr[t + 1]]
            p = p[self.seen[p] != query]
            self.seen[p] = query
            reached.append(p)
        return np.concatenate(reached) if reached else np.zeros([0], np.int64)

    def top(self, reached: np.ndarray, m: int) -> np.ndarray:
        """The m best reached positions by score, equal scores by position (fewer if fewer reached): int64 [<= m]."""
        if len(reached) <= m:
            return reached
        scores = self.row[reached].view(np.int32)  # positive float32: the same order as int32, compared faster
        threshold = scores.max()  # the common case: m or more items share the best score (same words, same length)
        if np.count_nonzero(scores == threshold) < m:
            threshold = np.partition(scores, len(scores) - m)[len(scores) - m]
        above = reached[scores > threshold]
        tied = reached[scores == threshold]
        need = m - len(above)
        return np.concatenate([above, np.partition(tied, need - 1)[:need] if need < len(tied) else tied])

    def clear(self, reached: np.ndarray) -> None:
        self.row[reached] = 0.0


def _chunk_candidates(lexical: LexicalRows, k: int, terms, splits, start: int, dense_rows: np.ndarray,
                      excluded: list[np.ndarray], position: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query of the chunk: (candidate positions, sorted, excluded dropped; their BM25 float32).

    Args:
      dense_rows: int64 [b, fetch] each query's dense over-fetch, best first; excluded: per query, catalog rows.
    """
    n = lexical.n
    positions, scores = [], []
    for i, dense in enumerate(dense_rows):
        query, skip = start + i, excluded[i]
        m = min(k + len(skip), n)
        reached = lexical.add(terms[splits[query]:splits[query + 1]], query)
        dense = dense[~np.isin(dense, skip)][:k] if len(skip) else dense[:k]
        union = np.unique(np.concatenate([position[dense], lexical.top(reached, m), np.arange(m)]))
        union = union[~np.isin(union, position[skip])] if len(skip) else union
        positions.append(union)
        scores.append(lexical.row[union])
        lexical.clear(reached)
    return positions, scores


def _padded(positions: list[np.ndarray], scores: list[np.ndarray], by_position: np.ndarray):
    """Ragged per-query candidates -> (rows int64 [b, c], -1 padded; BM25 float32 [b, c])."""
    width = max(len(p) for p in positions)
    rows = np.full([len(positions), width], -1, np.int64)
    lexical = np.zeros([len(positions), width], np.float32)
    for i, (p, s) in enumerate(zip(positions, scores)):
        rows[i, :len(p)], lexical[i, :len(p)] = by_position[p], s
    return rows, lexical


def fused_ranks(index: HybridIndex, query_embeddings: np.ndarray, query_text: list[str], targets: np.ndarray,
                exclude: list[np.ndarray] | None, dense_ranks: np.ndarray, weights, fusions=FUSIONS,
                chunk: int = CHUNK) -> dict[tuple[str, float], np.ndarray]:
    """1-based rank of each target under the fused score, for every fusion and weight.

    A target among its query's candidates is ranked by its fused score (equal scores by the tie order); one
    outside them comes after every candidate, in its dense order.

    Args:
      index: the :class:`HybridIndex` that defines the candidates (its k, BM25 postings, tie order).
      query_embeddings: float32 [n, d]; query_text: [n]; targets: int64 [n] catalog rows.
      exclude: per query, catalog rows left out (the target is kept), or None.
      dense_ranks: int64 [n], the targets' dense ranks (for targets outside the candidates).
    Returns:
      {(fusion, weight): int64 [n]}.
    """
    n, targets = len(targets), np.asarray(targets, np.int64)
    items = tf.constant(index.item_embeddings.numpy())
    position, by_position = index.lexical.position.numpy(), index.lexical.by_position.numpy()
    keep = [np.zeros([0], np.int64)] * n if exclude is None else [
        np.asarray(e, np.int64)[np.asarray(e, np.int64) != t] for e, t in zip(exclude, targets)]
    terms, splits = query_terms(index, query_text)
    lexical, top = LexicalRows(index), _dense_fetch(items)
    graphs = {f: _ranks_graph(f) for f in fusions}
    weight_list = tf.constant(list(weights), tf.float32)
    out = {(f, w): np.zeros(n, np.int64) for f in fusions for w in weights}
    lines = Progress(f"hybrid ranks over {index.num_items:,} items", n, "queries")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        queries = tf.constant(query_embeddings[start:stop], tf.float32)
        most = max(len(e) for e in keep[start:stop])
        dense_rows = top(queries, tf.constant(min(index.k_out + most, index.num_items), tf.int32)).numpy()
        rows, scores = _padded(*_chunk_candidates(lexical, index.k_out, terms, splits, start, dense_rows,
                                                  keep[start:stop], position), by_position)
        is_target = rows == targets[start:stop, None]
        found = is_target.any(axis=1)
        column = tf.constant(is_target.argmax(axis=1), tf.int64)
        outside = (rows >= 0).sum(axis=1) + dense_ranks[start:stop]
        for fusion in fusions:
            ranks = graphs[fusion](queries, items, tf.constant(rows), tf.constant(scores), column, weight_list).numpy()
            for j, w in enumerate(weights):
                out[fusion, w][start:stop] = np.where(found, ranks[:, j], outside)
        lines.update(stop)
    return out
