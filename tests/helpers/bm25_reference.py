"""BM25 scores straight from the postings, the reference the in-graph and sparse scorers are checked against."""

import numpy as np

from tfrec import lexical


def dense_scores(index: lexical.BM25, queries: list[str]) -> np.ndarray:
    """float64 [len(queries), num_items]: every query against every item, straight from the postings."""
    out = np.zeros((len(queries), index.num_items))
    for r, t in zip(*index.query_terms(queries)):
        a, b = index.indptr[t], index.indptr[t + 1]
        out[r, index.items[a:b]] += index.weights[a:b]
    return out
