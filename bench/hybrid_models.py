"""Two SavedModels over one catalog for bench/serving.py: dense-only top-k and hybrid (dense + in-graph BM25).

The query tower is a hashed bag of words (no BERT), so the two differ only by
what :class:`tfrec.index.hybrid.HybridIndex` adds: tokenising the query, the
BM25 postings, the candidate union and its re-scoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec import lexical
from tfrec.index import BruteForceIndex
from tfrec.index.hybrid import HybridIndex
from tfrec.lexical_graph import LexicalScorer, graph_words

DIM, BUCKETS = 64, 4096


class BenchModule(tf.Module):
    """``serving_default``: query_text string [batch], exclude_item_ids [batch, e] -> item_ids, scores [batch, k]."""

    def __init__(self, index, word_vectors: np.ndarray):
        super().__init__()
        self.index = index
        self.word_vectors = tf.Variable(word_vectors, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query_text"),
                                  tf.TensorSpec([None, None], tf.string, name="exclude_item_ids")])
    def retrieve(self, query_text, exclude_item_ids):
        words = graph_words(query_text)
        buckets = tf.strings.to_hash_bucket_fast(words, BUCKETS)
        query = tf.math.l2_normalize(tf.reduce_mean(tf.gather(self.word_vectors, buckets), axis=1), axis=-1)
        query = tf.where(tf.math.is_nan(query), tf.zeros_like(query), query)
        if getattr(self.index, "hybrid", False):
            scores, ids = self.index.search_hybrid(query, query_text, exclude_item_ids)
        else:
            scores, ids = self.index.search(query, exclude_item_ids)
        return {"item_ids": ids, "scores": scores}


def write_pair(folder: Path, num_items: int, k: int = 100, weight: float = 0.3, seed: int = 0) -> dict[str, Path]:
    """Saves ``folder/dense`` and ``folder/hybrid`` over the same random catalog; returns {name: path}."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    texts = [" ".join(row) for row in vocab[rng.zipf(1.3, size=[num_items, 6]) % len(vocab)]]
    items = rng.normal(size=[num_items, DIM]).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    ids = [f"item{j}" for j in range(num_items)]
    words = rng.normal(size=[BUCKETS, DIM]).astype(np.float32)
    dense = BruteForceIndex(items, ids, k)
    paths = {}
    for name, index in (("dense", dense),
                        ("hybrid", HybridIndex(dense, LexicalScorer(lexical.BM25(texts)), items, ids, weight))):
        module = BenchModule(index, words)
        paths[name] = folder / name
        tf.saved_model.save(module, str(paths[name]), signatures={"serving_default": module.retrieve})
    return paths
