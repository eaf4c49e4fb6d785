"""The ``bm25`` baseline: what a search team runs before any model, Okapi BM25 over the item texts.

A query's score for an item is the BM25 sum over the query's words (a word
typed twice counts twice), with Lucene's defaults and idf:

    score(q, d) = sum_{w in q} idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(w) = ln(1 + (N - df(w) + 0.5) / (df(w) + 0.5))

with k1 = 1.2, b = 0.75, words as lowercase ``\\w+`` runs of
``Catalog.texts`` (every text column) and of the query text. Equal scores
(every item a query shares no word with scores 0) are ordered by training
popularity, then catalog order, as the ``popularity`` baseline orders them,
so BM25 is never weaker than popularity on a query it cannot read.

Ranks follow :mod:`tfrec.evaluate`'s rule (1 + the other, not excluded items
ordered before the target). A block of queries scores every item through
the inverted index, so the cost is the postings of the queries' words plus
one pass over a [queries, items] block, never a [num_queries, num_items] matrix.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import tensorflow as tf

K1, B = 1.2, 0.75
BLOCK = 1 << 22  # query x item scores per block (32 MB as float64)
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words BM25 counts: lowercase ``\\w+`` runs."""
    return _WORD.findall(text.lower())


class BM25:
    """An inverted index of the item texts with BM25 weights.

    Args:
      texts: [num_items] one text per catalog row.
      k1, b: BM25's term-frequency saturation and length normalisation.

    Attributes:
      vocabulary: word -> term id.
      indptr: int64 [num_terms + 1]; term t's postings are ``items[indptr[t]:indptr[t + 1]]``.
      items: int64 [num_postings], catalog rows; weights: float64 [num_postings], each the BM25 term weight
        idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)) of that term in that item.
    """

    def __init__(self, texts: list[str], k1: float = K1, b: float = B):
        self.num_items = len(texts)
        self.vocabulary: dict[str, int] = {}
        term, item, tf_ = [], [], []
        lengths = np.zeros(self.num_items, np.float64)
        for row, text in enumerate(texts):
            counts = Counter(words(text))
            lengths[row] = sum(counts.values())
            for w, c in counts.items():
                term.append(self.vocabulary.setdefault(w, len(self.vocabulary)))
                item.append(row)
                tf_.append(c)
        term, item, tf_ = np.array(term, np.int64), np.array(item, np.int64), np.array(tf_, np.float64)
        df = np.bincount(term, minlength=len(self.vocabulary)).astype(np.float64)
        idf = np.log1p((self.num_items - df + 0.5) / (df + 0.5))
        avgdl = max(lengths.mean(), 1e-9) if self.num_items else 1.0
        norm = k1 * (1.0 - b + b * lengths[item] / avgdl)
        weight = idf[term] * tf_ * (k1 + 1.0) / (tf_ + norm)
        order = np.argsort(term, kind="stable")
        self.items, self.weights = item[order], weight[order]
        self.indptr = np.concatenate([[0], np.cumsum(df.astype(np.int64))])

    def query_terms(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(query row, term id) int64 [m] pairs, one per query word the catalog has (repeats kept)."""
        rows, terms = [], []
        for r, q in enumerate(queries):
            for w in words(q):
                t = self.vocabulary.get(w)
                if t is not None:
                    rows.append(r)
                    terms.append(t)
        return np.array(rows, np.int64), np.array(terms, np.int64)

    def scores(self, queries: list[str]) -> np.ndarray:
        """float64 [len(queries), num_items], every query against every item (for small cases and tests)."""
        rows, terms = self.query_terms(queries)
        flat, weight = self._postings(rows, terms)
        out = np.bincount(flat, weight, minlength=len(queries) * self.num_items)
        return out.reshape(len(queries), self.num_items)

    def _postings(self, rows: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The postings of (query row, term) pairs as (row * num_items + item, weight) [p]."""
        lengths = self.indptr[terms + 1] - self.indptr[terms]
        total = int(lengths.sum())
        # Position j of the output reads postings entry indptr[term] + (j - start of that pair's run).
        starts = np.repeat(self.indptr[terms] - (np.cumsum(lengths) - lengths), lengths)
        at = starts + np.arange(total, dtype=np.int64)
        return np.repeat(rows, lengths) * self.num_items + self.items[at], self.weights[at]

    def ranks(self, queries: list[str], targets: np.ndarray, tie_order: np.ndarray,
              exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """1-based rank of each query's target in the whole catalog.

        Items are ordered by BM25 score, then by ``tie_order`` (higher first).

        Args:
          queries: [n] query texts.
          targets: int [n] catalog rows.
          tie_order: int64 [num_items], distinct values: the order among equal scores.
          exclude: per query, catalog rows to leave out of the ranking (the target, if listed, is kept).
        Returns:
          int64 [n].
        """
        targets = np.asarray(targets, np.int64)
        q_rows, q_terms = self.query_terms(queries)
        bounds = np.searchsorted(q_rows, np.arange(0, len(queries) + 1))  # q_rows ascends
        chunk = max(1, BLOCK // max(self.num_items, 1))
        tie = tf.constant(tie_order, tf.int64)
        out = []
        for start in range(0, len(queries), chunk):
            stop = min(start + chunk, len(queries))
            lo, hi = bounds[start], bounds[stop]
            flat, weight = self._postings(q_rows[lo:hi] - start, q_terms[lo:hi])
            ex_rows, ex_cols = _exclusions(exclude, start, stop, targets)
            out.append(_block_ranks(tf.constant(flat), tf.constant(weight), stop - start, self.num_items, tie,
                                    tf.constant(targets[start:stop]), tf.constant(ex_rows),
                                    tf.constant(ex_cols)).numpy())
        return np.concatenate(out) if out else np.zeros([0], np.int64)


def _exclusions(exclude, start: int, stop: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in the block, catalog row) int64 pairs to leave out, the targets themselves never among them."""
    if exclude is None:
        return np.zeros([0], np.int64), np.zeros([0], np.int64)
    rows, cols = [], []
    for r in range(start, stop):
        skip = np.unique(np.asarray(exclude[r], np.int64))
        skip = skip[skip != targets[r]]
        rows.append(np.full(len(skip), r - start, np.int64))
        cols.append(skip)
    return np.concatenate(rows), np.concatenate(cols)


@tf.function(reduce_retracing=True)
def _block_ranks(flat, weight, num_queries, num_items, tie, targets, ex_rows, ex_cols):
    """int64 [num_queries]: 1 + the items ordered before each target (score, then ``tie``), less exclusions."""
    scores = tf.math.unsorted_segment_sum(weight, flat, num_queries * num_items)
    # Items with the same words and length get the same score up to float rounding: equal after rounding.
    scores = tf.round(tf.reshape(scores, [num_queries, num_items]) * 1e9)
    target_score = tf.gather(scores, targets, batch_dims=1)[:, None]
    target_tie = tf.gather(tie, targets)[:, None]
    ahead = (scores > target_score) | ((scores == target_score) & (tie[None, :] > target_tie))
    count = tf.reduce_sum(tf.cast(ahead, tf.int64), axis=1)
    excluded = tf.gather_nd(ahead, tf.stack([ex_rows, ex_cols], axis=1))
    count -= tf.math.unsorted_segment_sum(tf.cast(excluded, tf.int64), ex_rows, num_queries)
    return count + 1
