"""Full-catalog evaluation: every test query is scored against every item.

Metrics (one target item per query, rank r counted from 1):
``recall@k`` = share of queries with r <= k; ``ndcg@k`` = mean of
1/log2(r + 1) when r <= k, else 0; ``mrr`` = mean of 1/r.
Ties are broken against the target (an item scoring exactly the target's
score ranks before it), so a constant model cannot look good.

Scores are computed in blocks of ``query_chunk`` queries x ``item_chunk``
items, so memory stays at one block (``[query_chunk, item_chunk]`` float32)
whatever the catalog size: a rank is a running count of the items that score
at least the target's score, so no ``[num_queries, num_items]`` matrix is ever
held. (Serving's top k is :func:`tfrec.index.base.chunked_top_k`.)
"""

from __future__ import annotations

import dataclasses
import logging
import weakref

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfrec.data.dataset import RetrievalData
from tfrec.progress import Progress

log = logging.getLogger("tfrec")

QUERY_CHUNK = 1024
# Items per block: a [1024, 1024] float32 block (4 MB) stays in cache between the matmul that writes it and the
# comparison that reads it; [1024, 4096] blocks cost about 1.5x the CPU time here (bench/evaluate_kernel.py).
ITEM_CHUNK = 1024


# One compiled function per tower, for as long as the tower lives: the validation pass of every epoch reuses the
# graphs traced in the first instead of tracing the tower again. Weak keys, and a function that holds the tower
# only weakly, so the cache keeps no tower alive.
_EMBED_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tower_fn(tower) -> tf.types.experimental.PolymorphicFunction:
    """``tower(features, training=False)`` as a ``tf.function``, the same one at every call for the same tower.

    The graph reads the tower's variables when it runs, not when it is traced,
    so weights changed by training between calls are the ones used.
    """
    try:
        fn = _EMBED_FNS.get(tower)
    except TypeError:  # neither hashable nor weakly referenceable: a function for this call only
        return tf.function(lambda f: tower(f, training=False), reduce_retracing=True)
    if fn is None:
        ref = weakref.ref(tower)
        fn = _EMBED_FNS[tower] = tf.function(lambda f: ref()(f, training=False), reduce_retracing=True)
    return fn


def embed(tower: tf.keras.layers.Layer, features: dict, batch_size: int = 1024, progress: str | None = None
          ) -> np.ndarray:
    """Runs a tower over feature arrays in batches: float32 [n, dim].

    Memory stays bounded by one batch of inputs plus the [n, dim] output. With
    ``progress`` (a label), a progress bar shows on a terminal, and a long pass
    writes a line in the log at least every 30 s (:class:`tfrec.progress.Progress`).
    The tower is traced once (twice with a last, shorter batch) and the traced
    function is reused by later calls on the same tower (:func:`_tower_fn`).
    """
    n = len(next(iter(features.values())))
    fn = _tower_fn(tower)
    out = []
    quiet = progress is None or not log.isEnabledFor(logging.INFO)
    lines = None if progress is None else Progress(progress, n, "rows")
    for start in tqdm(range(0, n, batch_size), desc=progress, disable=True if quiet else None, unit="batch",
                      mininterval=2.0, leave=False):
        batch = {k: (tf.constant(v[start:start + batch_size].astype(str).tolist()) if v.dtype == object
                     else tf.constant(v[start:start + batch_size])) for k, v in features.items()}
        out.append(fn(batch).numpy())
        if lines is not None:
            lines.update(min(start + batch_size, n))
    return np.concatenate(out) if out else np.zeros([0, 0], np.float32)


def _chunk_exclusions(exclude: list[np.ndarray] | None, start: int, stop: int,
                      also: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row in the query chunk, item row) pairs to leave out, for queries ``start:stop``.

    ``also`` [stop - start] adds one item per query (the target, when counting ranks).
    """
    rows, cols = [], []
    if exclude is not None:
        for r, skip in enumerate(exclude[start:stop]):
            rows.append(np.full(len(skip), r, np.int64))
            cols.append(np.asarray(skip, np.int64))
    if also is not None:
        rows.append(np.arange(stop - start, dtype=np.int64))
        cols.append(np.asarray(also, np.int64))
    if not rows:
        return np.zeros([0], np.int64), np.zeros([0], np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _count_in_block(queries: tf.Tensor, block: tf.Tensor, first: tf.Tensor, thresholds: tf.Tensor,
                    rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """Per query, the items of ``block`` scoring >= its threshold, less the left-out pairs among them.

    Args:
      queries: float32 [b, d]; block: float32 [c, d], catalog rows ``first .. first + c - 1``.
      thresholds: float32 [b], each query's target score.
      rows, cols: int32 [p], (query row, catalog row) pairs inside this block to leave out.
    Returns:
      int32 [b].
    """
    scores = tf.matmul(queries, block, transpose_b=True)  # [b, c]: the only block in memory
    counted = tf.reduce_sum(tf.cast(scores >= thresholds[:, None], tf.int32), axis=1)
    # The left-out pairs are judged by their scores in this very block, so what is taken out is exactly what
    # was counted, whatever the rounding of the threshold.
    picked = tf.gather_nd(scores, tf.stack([rows, cols - first], axis=1))
    hits = tf.cast(picked >= tf.gather(thresholds, rows), tf.int32)
    return counted - tf.math.unsorted_segment_sum(hits, rows, tf.shape(queries)[0])


@tf.function(reduce_retracing=True)
def _ranks_of_chunk(queries: tf.Tensor, blocks: tf.Tensor, tail: tf.Tensor, target_items: tf.Tensor,
                    rows: tf.Tensor, cols: tf.Tensor, starts: tf.Tensor) -> tf.Tensor:
    """Ranks of one chunk of queries, every item block in one graph (a while loop, no Python per block).

    Args:
      queries: float32 [b, d].
      blocks: float32 [n_blocks, c, d], the catalog's first n_blocks * c rows; tail: float32 [r, d], the rest.
      target_items: float32 [b, d], each query's target's embedding.
      rows, cols: int32 [p], (query row, catalog row) pairs left out (each target among them), sorted by cols.
      starts: int32 [n_blocks + 2], where each block's pairs (and the tail's) begin in ``rows``/``cols``.
    Returns:
      int32 [b]: 1 + the items, not left out, that score >= the target.
    """
    n_blocks, c = tf.shape(blocks)[0], tf.shape(blocks)[1]
    thresholds = tf.linalg.diag_part(tf.matmul(queries, target_items, transpose_b=True))

    def body(i, count):
        lo, hi = starts[i], starts[i + 1]
        return i + 1, count + _count_in_block(queries, blocks[i], i * c, thresholds, rows[lo:hi], cols[lo:hi])

    start = (tf.constant(0), tf.ones([tf.shape(queries)[0]], tf.int32))  # the target counts once
    _, count = tf.while_loop(lambda i, _: i < n_blocks, body, start)
    lo, hi = starts[n_blocks], starts[n_blocks + 1]
    return count + _count_in_block(queries, tail, n_blocks * c, thresholds, rows[lo:hi], cols[lo:hi])


def target_ranks(query_embeddings: np.ndarray, item_embeddings: np.ndarray, targets: np.ndarray,
                 exclude: list[np.ndarray] | None = None, query_chunk: int = QUERY_CHUNK,
                 item_chunk: int = ITEM_CHUNK) -> np.ndarray:
    """1-based rank of each query's target among all items, in blocks of queries x items.

    rank = 1 + the number of other, not excluded items scoring at least the
    target's score (ties count against the target); a target whose score is
    not finite (NaN, inf: a diverged model) ranks last. Each block counts all its
    items, then the target and the excluded items are taken back out using
    their scores from that same block; so the target always counts exactly
    once, whatever the rounding. One compiled call per chunk of queries walks
    the whole catalog.

    Args:
      query_embeddings: float32 [num_queries, dim].
      item_embeddings: float32 [num_items, dim].
      targets: int [num_queries], the target's row in ``item_embeddings``.
      exclude: per query, item rows to leave out of the ranking (the target, if listed, is kept).
      query_chunk, item_chunk: the block size; memory ~ query_chunk * item_chunk floats.
    Returns:
      int64 [num_queries].
    """
    item_embeddings = np.asarray(item_embeddings, np.float32)
    n_items, dim = item_embeddings.shape
    n_blocks = n_items // item_chunk
    blocks = tf.constant(item_embeddings[:n_blocks * item_chunk].reshape(n_blocks, item_chunk, dim))
    tail = tf.constant(item_embeddings[n_blocks * item_chunk:])
    bounds = np.append(np.arange(n_blocks + 1) * item_chunk, n_items)
    targets = np.asarray(targets, np.int64)
    ranks = []
    lines = Progress(f"ranking {n_items:,} items", len(targets), "queries")  # a line every 30 s of a long pass
    for start in range(0, len(targets), query_chunk):
        t = targets[start:start + query_chunk]
        rows, cols = _chunk_exclusions(exclude, start, start + len(t), also=t)
        if exclude is not None:  # a listed target is the "also" entry already: drop its duplicate
            keep = np.ones(len(rows), bool)
            keep[:len(rows) - len(t)] = cols[:len(rows) - len(t)] != t[rows[:len(rows) - len(t)]]
            rows, cols = rows[keep], cols[keep]
        order = np.argsort(cols, kind="stable")
        rows, cols = rows[order], cols[order]
        ranks.append(_ranks_of_chunk(tf.constant(query_embeddings[start:start + query_chunk], tf.float32), blocks,
                                     tail, tf.constant(item_embeddings[t]), tf.constant(rows, tf.int32),
                                     tf.constant(cols, tf.int32),
                                     tf.constant(np.searchsorted(cols, bounds), tf.int32)).numpy())
        lines.update(start + len(t))
    if not ranks:
        return np.zeros([0], np.int64)
    ranks = np.concatenate(ranks).astype(np.int64)
    # A NaN target score compares false with everything, which would rank it first: a diverged model's
    # target is ranked last instead.
    target_scores = np.einsum("ij,ij->i", np.asarray(query_embeddings, np.float32), item_embeddings[targets])
    ranks[~np.isfinite(target_scores)] = n_items
    return ranks


def ranks_from_item_scores(item_scores: np.ndarray, targets: np.ndarray,
                           exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Ranks when every query shares one score per item (popularity): a sort, not a matmul.

    Same rule as :func:`target_ranks` (ties against the target). The scores are compared in their own
    dtype: integer scores (:func:`popularity_order`) never round into a tie.

    Args:
      item_scores: float or int [num_items].
      targets: int [num_queries].
      exclude: per query, item rows to leave out (the target, if listed, is kept).
    Returns:
      int64 [num_queries].
    """
    item_scores = np.asarray(item_scores)
    targets = np.asarray(targets, np.int64)
    ordered = np.sort(item_scores)
    target_scores = item_scores[targets]
    ranks = len(ordered) - np.searchsorted(ordered, target_scores, side="left")  # items >= target, incl. it
    if exclude is not None:
        for r, skip in enumerate(exclude):
            skip = np.asarray(skip, np.int64)
            skip = skip[skip != targets[r]]
            ranks[r] -= int(np.count_nonzero(item_scores[skip] >= target_scores[r]))
    return ranks.astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@k, NDCG@k for each k, and MRR, from 1-based ranks [num_queries]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks <= k))
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def validation_sample(num_queries: int, max_queries: int | None, seed: int) -> np.ndarray | None:
    """A fixed, seeded subset of a split's rows (sorted), or None to keep them all.

    Depends only on (num_queries, max_queries, seed), so a restarted run
    validates on the very same queries.
    """
    if not max_queries or num_queries <= max_queries:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_queries, size=max_queries, replace=False))


def _targets_and_exclusions(data: RetrievalData, split: str, exclude_seen: bool):
    examples = getattr(data, split)
    targets = np.array([data.catalog.position[i] for i in examples.item_id], dtype=np.int64)
    exclude = None
    if exclude_seen:
        seen = data.seen_items(split)
        exclude = [np.array([data.catalog.position[i] for i in seen.get(u, ())], dtype=np.int64)
                   for u in examples.user_id]
    return targets, exclude


def evaluate_embeddings(query_embeddings: np.ndarray, item_embeddings: np.ndarray, data: RetrievalData,
                        split: str, ks: list[int], exclude_seen: bool = False) -> dict[str, float]:
    """Metrics of precomputed embeddings on ``split`` ("validation" or "test").

    Args:
      query_embeddings: float32 [len(split), dim].
      item_embeddings: float32 [num_items, dim].
    """
    return metrics_from_ranks(split_ranks(query_embeddings, item_embeddings, data, split, exclude_seen), ks)


def split_ranks(query_embeddings: np.ndarray, item_embeddings: np.ndarray, data: RetrievalData, split: str,
                exclude_seen: bool = False) -> np.ndarray:
    """int64 [len(split)]: each ``split`` query's target rank (:func:`target_ranks`, the split's exclusions)."""
    targets, exclude = _targets_and_exclusions(data, split, exclude_seen)
    return target_ranks(query_embeddings, item_embeddings, targets, exclude)


def sample_split(data: RetrievalData, split: str, max_queries: int | None, seed: int) -> RetrievalData:
    """``data`` with ``split`` cut to :func:`validation_sample`'s rows (the same object when it is small enough)."""
    rows = validation_sample(len(getattr(data, split)), max_queries, seed)
    return data if rows is None else dataclasses.replace(data, **{split: getattr(data, split).take(rows)})


def test_sample(data: RetrievalData, split: str, max_queries: int | None, seed: int) -> tuple[RetrievalData, dict]:
    """``data`` with ``split`` cut to a seeded sample of at most ``max_queries`` queries (:func:`sample_split`:
    the model and every baseline are measured on the same rows), and ``eval.json``'s ``test_queries`` entry
    (``{"evaluated": n, "of": all}``)."""
    total = len(getattr(data, split))
    sampled = sample_split(data, split, max_queries, seed)
    n = len(getattr(sampled, split))
    if n < total:
        log.info("eval: %s figures on a seeded sample of %s of its %s queries (eval.test_max_queries; null: all): "
                 "the standard error of a recall is at most %.4f", split, f"{n:,}", f"{total:,}", 0.5 / np.sqrt(n))
    return sampled, {"evaluated": n, "of": total}


# ----------------------------------------------------------------- baselines
def popularity_order(item_counts: np.ndarray) -> np.ndarray:
    """The popularity order of the catalog as integers: int64 [num_items], a permutation of ``0 .. n - 1``,
    higher = more training interactions, equal counts ordered by catalog row (the earlier row higher).

    Integers, so no two items ever tie, whatever the catalog size (scores such as ``count - row / 2n`` do
    tie again in float32). The ``popularity`` baseline ranks by it and ``bm25`` breaks its ties by it.

    Args:
      item_counts: int [num_items], each catalog row's training interactions.
    """
    counts = np.asarray(item_counts, np.int64)
    order = np.empty(len(counts), np.int64)
    order[np.lexsort((-np.arange(len(counts)), counts))] = np.arange(len(counts))  # by count, then earlier row
    return order


def popularity_baseline(data: RetrievalData, split: str, ks: list[int], exclude_seen: bool = False) -> dict:
    """Every query gets the catalog ordered by training interaction count (:func:`popularity_order`)."""
    targets, exclude = _targets_and_exclusions(data, split, exclude_seen)
    return metrics_from_ranks(ranks_from_item_scores(popularity_order(data.item_counts()), targets, exclude), ks)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, one row per model, one column per metric."""
    names = list(next(iter(results.values())).keys())
    width = max(len(n) for n in results) + 2
    lines = [" " * width + "".join(f"{m:>11}" for m in names)]
    for model, values in results.items():
        lines.append(f"{model:<{width}}" + "".join(f"{values.get(m, float('nan')):>11.4f}" for m in names))
    return "\n".join(lines)
