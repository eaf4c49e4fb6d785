"""BM25 inside a SavedModel: :mod:`tfrec.lexical`'s scores from core TensorFlow ops.

The item texts' postings are stored in the module: a hash table word -> term
id, ``indptr`` (term t's postings are ``indptr[t]:indptr[t + 1]``) and the
flat posting arrays (idf folded into each weight), all built by
:class:`tfrec.lexical.BM25`, so k1, b, idf and tokenisation are the same. Items
are held by their place in a tie order (``position``: 0 = first among equal
scores; training popularity as the ``bm25`` baseline breaks ties, or catalog
order), so pairs sorted by (query, position) are already in the baseline's
order among equal scores. A query is tokenised in the graph
(:func:`graph_words`), its words looked up, their postings gathered and summed
per (query, item): the work grows with the query's postings, not with catalog
x vocabulary. Only core ops (no py_func, no custom ops), so stock TensorFlow
Serving runs it.

Usage::

    from tfrec.lexical import BM25
    from tfrec.lexical_graph import LexicalScorer

    scorer = LexicalScorer(BM25(item_texts))
    scores = scorer.scores(tf.constant(["red shoes"]))   # float32 [1, num_items]
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

import numpy as np
import tensorflow as tf

from tfrec.lexical import BM25

# Anything that is not a letter, a digit or "_" separates words: the same runs as Python's
# ``re`` ``\w+`` on the lowercased text (tests/tfrec/test_lexical_graph.py checks tricky strings).
_NOT_WORD = r"[^\p{L}\p{N}_]+"
# Sorting m postings costs about SORT_COST times summing them into a [batch * num_items] grid, per entry
# (measured at 10^5 items: equal near 4,000 postings, the grid 3x faster at 160,000).
SORT_COST = 16


def graph_words(texts: tf.Tensor) -> tf.RaggedTensor:
    """:func:`tfrec.lexical.words` in the graph: string [batch] -> string ragged [batch, (words)]."""
    lowered = tf.strings.lower(texts, encoding="utf-8")
    return tf.strings.split(tf.strings.regex_replace(lowered, _NOT_WORD, " "))


def tie_positions(num_items: int, tie_order=None) -> tuple[np.ndarray, np.ndarray]:
    """(position int64 [n]: each catalog row's place, 0 first; by_position int64 [n]: the row at each place).

    Args:
      tie_order: int [n], distinct, higher first (:func:`tfrec.evaluate.popularity_order`); None: catalog order.
    """
    tie = np.arange(num_items)[::-1] if tie_order is None else np.asarray(tie_order, np.int64)
    by_position = np.argsort(-tie, kind="stable").astype(np.int64)
    position = np.empty(num_items, np.int64)
    position[by_position] = np.arange(num_items)
    return position, by_position


class LexicalScorer(tf.Module):
    """BM25 scores of query texts against a fixed catalog, from postings held in the module.

    Args:
      bm25: :class:`tfrec.lexical.BM25` over the catalog's texts (row i = catalog row i).
      tie_order: int [num_items], distinct, higher first among equal scores (None: catalog order).
    """

    def __init__(self, bm25: BM25, tie_order=None, name: str | None = None):
        super().__init__(name=name)
        self.num_items = int(bm25.num_items)
        terms = sorted(bm25.vocabulary, key=bm25.vocabulary.get)
        keys = tf.constant(terms if terms else [""], tf.string)
        values = tf.range(len(terms), dtype=tf.int64) if terms else tf.constant([-1], tf.int64)
        self.vocabulary = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values),
                                                    default_value=-1)
        self.num_terms = len(terms)
        position, by_position = tie_positions(self.num_items, tie_order)
        # Variables: the postings land in variables/ rather than in the graph proto (2 GB limit).
        self.position = tf.Variable(position, trainable=False, name="tie_position")
        self.by_position = tf.Variable(by_position, trainable=False, name="rows_by_position")
        indptr = np.asarray(bm25.indptr, np.int64)  # one more, empty term for words the catalog lacks
        self.indptr = tf.Variable(np.append(indptr, indptr[-1]), trainable=False, name="indptr")
        self.positions = tf.Variable(position[np.asarray(bm25.items, np.int64)], trainable=False,
                                     name="posting_positions")
        self.weights = tf.Variable(np.asarray(bm25.weights, np.float32), trainable=False, name="posting_weights")

    def postings(self, query_text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The postings the queries' words reach (a word typed twice counts twice), in word order.

        Args:
          query_text: string [batch].
        Returns:
          (query row int64 [m], item position int64 [m], weight float32 [m]).
        """
        words = graph_words(query_text)
        terms = self.vocabulary.lookup(words.flat_values)
        terms = tf.where(terms >= 0, terms, self.num_terms)  # an unknown word: the empty term past the last
        start = tf.gather(self.indptr, terms)
        lengths = tf.gather(self.indptr, terms + 1) - start
        ends = tf.cumsum(lengths)  # word j's postings are flat entries ends[j] - lengths[j] .. ends[j] - 1
        flat = tf.range(tf.reduce_sum(lengths))
        word = tf.searchsorted(ends, flat, side="right", out_type=tf.int64)
        at = flat + tf.gather(start - ends + lengths, word)
        # The query row of each word, from the row splits (value_rowids builds it through a boolean_mask).
        rows = tf.searchsorted(words.row_splits, tf.range(tf.size(terms, tf.int64)), side="right",
                               out_type=tf.int64) - 1
        return tf.gather(rows, word), tf.gather(self.positions, at), tf.gather(self.weights, at)

    def reached(self, query_text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The BM25 of each (query, item) pair some query word reaches, without sorting a [batch, num_items] row.

        Args:
          query_text: string [batch].
        Returns:
          (keys int64 [u] ascending, each ``query row * num_items + item position``; scores float32 [u] > 0),
          so one query's pairs are contiguous and in tie order. Each score sums its postings in the
          query's word order, as :meth:`scores` and :mod:`tfrec.lexical` do.
        """
        rows, positions, weights = self.postings(query_text)
        keys = rows * self.num_items + positions
        cells = tf.shape(query_text, out_type=tf.int64)[0] * self.num_items

        def by_sorting():  # few postings: sort them
            order = tf.argsort(keys, stable=True)  # stable: one pair's postings stay in word order
            ordered = tf.gather(keys, order)
            first = ordered != tf.pad(ordered, [[1, 0]], constant_values=-1)[:-1]  # [m]: a new pair starts here
            segment = tf.cumsum(tf.cast(first, tf.int64)) - 1
            return tf.math.segment_max(ordered, segment), tf.math.segment_sum(tf.gather(weights, order), segment)

        def by_grid():  # common words: summing into [batch * num_items] and reading it back costs less
            grid = tf.math.unsorted_segment_sum(weights, keys, cells)
            at = tf.reshape(tf.where(grid > 0), [-1])
            return at, tf.gather(grid, at)

        return tf.cond(tf.size(keys, tf.int64) * SORT_COST > cells, by_grid, by_sorting)

    def scores(self, query_text: tf.Tensor) -> tf.Tensor:
        """BM25 of every catalog item: string [batch] -> float32 [batch, num_items] (0 where no word reaches)."""
        rows, positions, weights = self.postings(query_text)
        batch = tf.shape(query_text, out_type=tf.int64)[0]
        flat = tf.math.unsorted_segment_sum(weights, rows * self.num_items + positions, batch * self.num_items)
        by_position = tf.reshape(flat, tf.stack([batch, tf.constant(self.num_items, tf.int64)]))
        return tf.gather(by_position, self.position, axis=1)  # back to catalog rows
