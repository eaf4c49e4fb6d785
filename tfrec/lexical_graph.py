"""BM25 inside a SavedModel: :mod:`tfrec.lexical`'s scores from core TensorFlow ops.

The item texts' postings are stored in the module: a hash table word -> term
id, ``indptr`` (term t's postings are ``indptr[t]:indptr[t + 1]``) and the
flat posting arrays ``items`` / ``weights`` (idf folded into each weight), all
built by :class:`tfrec.lexical.BM25`, so k1, b, idf and tokenisation are the
same. A query is tokenised in the graph (:func:`graph_words`), its words looked
up, their postings gathered and summed per item with one
``unsorted_segment_sum``: the work grows with the query's postings, not with
catalog x vocabulary. Only core ops (no py_func, no custom ops), so stock
TensorFlow Serving runs it.

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


def graph_words(texts: tf.Tensor) -> tf.RaggedTensor:
    """:func:`tfrec.lexical.words` in the graph: string [batch] -> string ragged [batch, (words)]."""
    lowered = tf.strings.lower(texts, encoding="utf-8")
    return tf.strings.split(tf.strings.regex_replace(lowered, _NOT_WORD, " "))


class LexicalScorer(tf.Module):
    """BM25 scores of query texts against a fixed catalog, from postings held in the module.

    Args:
      bm25: :class:`tfrec.lexical.BM25` over the catalog's texts (row i = catalog row i).
    """

    def __init__(self, bm25: BM25, name: str | None = None):
        super().__init__(name=name)
        self.num_items = int(bm25.num_items)
        terms = sorted(bm25.vocabulary, key=bm25.vocabulary.get)
        keys = tf.constant(terms if terms else [""], tf.string)
        values = tf.range(len(terms), dtype=tf.int64) if terms else tf.constant([-1], tf.int64)
        self.vocabulary = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values),
                                                    default_value=-1)
        # Variables: the postings land in variables/ rather than in the graph proto (2 GB limit).
        self.indptr = tf.Variable(np.asarray(bm25.indptr, np.int64), trainable=False, name="indptr")
        self.items = tf.Variable(np.asarray(bm25.items, np.int64), trainable=False, name="posting_items")
        self.weights = tf.Variable(np.asarray(bm25.weights, np.float32), trainable=False, name="posting_weights")

    def postings(self, query_text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The postings the queries' words reach (a word typed twice counts twice).

        Args:
          query_text: string [batch].
        Returns:
          (query row int64 [m], catalog row int64 [m], weight float32 [m]).
        """
        words = graph_words(query_text)
        terms = self.vocabulary.lookup(words.flat_values)
        known = terms >= 0
        rows = tf.boolean_mask(words.value_rowids(), known)
        terms = tf.boolean_mask(terms, known)
        spans = tf.ragged.range(tf.gather(self.indptr, terms), tf.gather(self.indptr, terms + 1))
        flat = spans.flat_values
        return (tf.gather(rows, spans.value_rowids()), tf.gather(self.items, flat),
                tf.gather(self.weights, flat))

    def scores(self, query_text: tf.Tensor) -> tf.Tensor:
        """BM25 of every catalog item: string [batch] -> float32 [batch, num_items] (0 where no word reaches)."""
        rows, items, weights = self.postings(query_text)
        batch = tf.shape(query_text, out_type=tf.int64)[0]
        flat = tf.math.unsorted_segment_sum(weights, rows * self.num_items + items, batch * self.num_items)
        return tf.reshape(flat, tf.stack([batch, tf.constant(self.num_items, tf.int64)]))
