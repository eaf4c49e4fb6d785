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
ordered before the target). Only the postings of the queries' words are
touched, never a [num_queries, num_items] matrix: the cost grows with how many
items the queries' words reach, not with queries x items.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

K1, B = 1.2, 0.75
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

    def ranks(self, queries: list[str], targets: np.ndarray, tie_order: np.ndarray,
              exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """1-based rank of each query's target in the whole catalog.

        Items are ordered by BM25 score, then by ``tie_order`` (higher first).
        Only the items a query's words reach are scored: every other item
        scores 0, so it is before the target only when the target scores 0
        too and ``tie_order`` puts it first, which one count per target covers.

        Args:
          queries: [n] query texts.
          targets: int [n] catalog rows.
          tie_order: int64 [num_items], distinct values: the order among equal scores.
          exclude: per query, catalog rows to leave out of the ranking (the target, if listed, is kept).
        Returns:
          int64 [n].
        """
        targets, tie = np.asarray(targets, np.int64), np.asarray(tie_order, np.int64)
        tie_first = self.num_items - np.searchsorted(np.sort(tie), tie, side="right")  # items tie_order puts first
        q_rows, q_terms = self.query_terms(queries)
        bounds = np.searchsorted(q_rows, np.arange(len(queries) + 1))  # q_rows ascends
        # One query's scores: zero but where its words' postings land, put back to zero after each query.
        score = np.zeros(self.num_items)
        out = np.ones(len(queries), np.int64)
        for r, target in enumerate(targets):
            spans = [(self.indptr[t], self.indptr[t + 1]) for t in q_terms[bounds[r]:bounds[r + 1]]]
            reached = [self.items[a:b] for a, b in spans]
            # Added in the query's word order whatever the item: the same words and length, the same score.
            for items, (a, b) in zip(reached, spans):
                score[items] += self.weights[a:b]
            t_score, t_tie = score[target], tie[target]
            before = 0
            if exclude is not None:
                skip = np.unique(np.asarray(exclude[r], np.int64))
                skip, s = skip[skip != target], score[skip[skip != target]]
                before -= np.count_nonzero((s > t_score) | ((s == t_score) & (tie[skip] > t_tie)))
            reached_first = 0
            for items in reached:
                s = score[items]
                before += np.count_nonzero(s > t_score) + np.count_nonzero(tie[items[s == t_score]] > t_tie)
                if t_score == 0:
                    reached_first += np.count_nonzero(tie[items[s > 0]] > t_tie)
                score[items] = -np.inf  # an item two words reach is counted once
            if t_score == 0:  # a target no word reached: the unreached items tie_order puts first are before it
                before += tie_first[target] - reached_first
            for items in reached:
                score[items] = 0.0
            out[r] += before
        return out
