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

import concurrent.futures

import numpy as np
import tensorflow as tf

from tfrec.index import base
from tfrec.index.hybrid import FUSIONS, HybridIndex, combine, fusion_terms
from tfrec.lexical_graph import graph_words
from tfrec.progress import Progress

CHUNK = 256  # queries per dense top k ([CHUNK, num_items] scores) and per fused pass
TOP_LEVELS = 4  # score values tried from the best down before a partition finds the m-th best


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
    """The targets' ranks of a chunk under ``fusion`` at every weight, one graph (traced once per fusion)."""
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
        self.blocked = np.zeros(self.n, bool)  # one query's excluded positions, cleared after it

    def add(self, terms: np.ndarray) -> np.ndarray:
        """Sums the query's postings (word order); returns the positions reached, each once: int64 [r]."""
        reached = []
        for t in terms[terms >= 0]:
            p = self.positions[self.indptr[t]:self.indptr[t + 1]]
            before = self.row[p]
            self.row[p] = before + self.weights[self.indptr[t]:self.indptr[t + 1]]
            reached.append(p[before == 0] if reached else p)  # weights are > 0: 0 before = no earlier word's
        return np.concatenate(reached) if len(reached) > 1 else reached[0] if reached else np.zeros([0], np.int64)

    def top(self, reached: np.ndarray, m: int) -> np.ndarray:
        """The m best reached positions by score, equal scores by position (fewer if fewer reached): int64 [<= m]."""
        if len(reached) <= m:
            return reached
        scores = self.row[reached].view(np.int32)  # positive float32: the same order as int32, compared faster
        threshold = scores.max()
        for _ in range(TOP_LEVELS):  # the m-th best score is usually among the few best values (many items tie)
            if np.count_nonzero(scores >= threshold) >= m:
                break
            threshold = scores[scores < threshold].max()
        else:
            threshold = np.partition(scores, len(scores) - m)[len(scores) - m]
        above = reached[scores > threshold]
        tied = reached[scores == threshold]
        need = m - len(above)
        return np.concatenate([above, np.partition(tied, need - 1)[:need] if need < len(tied) else tied])

    def candidates(self, terms: np.ndarray, dense: np.ndarray, skip: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's candidates: (positions int64 [c] ascending, excluded dropped; their BM25 float32 [c]).

        Args:
          terms: the query's term ids; dense: int64 [fetch] its dense over-fetch's tie positions, best first;
          skip: int64 [e] its excluded tie positions; k: the index's k.
        """
        m = min(k + len(skip), self.n)
        reached = self.add(terms)
        self.blocked[skip] = True
        dense = dense[~self.blocked[dense]][:k]
        union = np.sort(np.concatenate([dense, self.top(reached, m), np.arange(m)]))
        union = union[np.append(True, union[1:] != union[:-1]) & ~self.blocked[union]]  # each once, not excluded
        self.blocked[skip] = False
        scores = self.row[union]
        self.row[reached] = 0.0
        return union, scores


def _padded(candidates: list[tuple[np.ndarray, np.ndarray]], by_position: np.ndarray):
    """Per query (positions [c_i], BM25 [c_i]) -> (rows int64 [b, c], -1 padded; BM25 float32 [b, c])."""
    width = max(len(p) for p, _ in candidates)
    rows = np.full([len(candidates), width], -1, np.int64)
    lexical = np.zeros([len(candidates), width], np.float32)
    for i, (p, s) in enumerate(candidates):
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
    skip = [np.zeros([0], np.int64)] * n if exclude is None else [
        position[np.asarray(e, np.int64)[np.asarray(e, np.int64) != t]] for e, t in zip(exclude, targets)]
    terms, splits = query_terms(index, query_text)
    lexical, top = LexicalRows(index), _dense_fetch(items)
    graphs = {f: _ranks_graph(f) for f in fusions}
    weight_list = tf.constant(list(weights), tf.float32)
    out = {(f, w): np.zeros(n, np.int64) for f in fusions for w in weights}
    # Chunks of queries with as many exclusions: each chunk over-fetches k + its most, no more.
    order = np.argsort([len(e) for e in skip], kind="stable")
    chunks = [order[start:start + chunk] for start in range(0, n, chunk)]

    def dense_fetch(queries: np.ndarray) -> tuple[tf.Tensor, np.ndarray]:  # (embeddings [b, d], positions [b, f])
        embedded = tf.constant(query_embeddings[queries], tf.float32)
        fetch = min(index.k_out + len(skip[queries[-1]]), index.num_items)
        return embedded, position[top(embedded, tf.constant(fetch, tf.int32)).numpy()]

    lines = Progress(f"hybrid ranks over {index.num_items:,} items", n, "queries")
    # The next chunk's matmul runs in the graph while this chunk's BM25 rows are summed in NumPy.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(dense_fetch, chunks[0]) if chunks else None
        for i, queries in enumerate(chunks):
            embedded, dense = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(dense_fetch, chunks[i + 1])
            rows, scores = _padded([lexical.candidates(terms[splits[q]:splits[q + 1]], d, skip[q], index.k_out)
                                    for q, d in zip(queries, dense)], by_position)
            is_target = rows == targets[queries, None]
            found = is_target.any(axis=1)
            column = tf.constant(is_target.argmax(axis=1), tf.int64)
            outside = (rows >= 0).sum(axis=1) + dense_ranks[queries]
            for fusion in fusions:
                ranks = graphs[fusion](embedded, items, tf.constant(rows), tf.constant(scores), column,
                                       weight_list).numpy()
                for j, w in enumerate(weights):
                    out[fusion, w][queries] = np.where(found, ranks[:, j], outside)
            lines.update(min(n, (i + 1) * chunk))
    return out
