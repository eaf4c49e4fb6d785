"""Shared pieces of every retrieval index: catalog storage, exclusion, checks.

An index is a ``tf.Module`` holding the catalog as non-trainable variables, so
it is tracked and written by ``tf.saved_model.save`` when it is an attribute
of a bigger module. ``search`` is a plain method built from TF ops: call it
eagerly, or inside a ``tf.function`` (unknown batch size and unknown number
of excluded ids are fine); the export's signatures wrap it that way.

Exclusion contract shared by all indexes: ``exclude_item_ids`` is a string
tensor ``[batch, e]`` padded with ``""``. Every index over-fetches ``k + e``
candidates, drops the excluded ones and keeps the best ``k'``; since at most
``e`` of the over-fetched candidates can be excluded, ``k'`` good results
remain whenever the catalog (or the approximate candidate set) has them.
That is why item ids must be unique and non-empty: a duplicated id could hide
more than ``e`` candidates, and ``""`` is the padding value. A request's history
joins its exclusions with :func:`with_history` (the export's ``exclude_history``).
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

# Score given to filtered-out candidates. -inf (not a large negative number)
# so that a real dot product can never tie with it.
NEG_INF = float("-inf")


def as_embeddings(item_embeddings: np.ndarray | tf.Tensor) -> np.ndarray:
    """Checks and converts item embeddings to float32 numpy ``[num_items, dim]``."""
    array = item_embeddings.numpy() if isinstance(item_embeddings, tf.Tensor) else item_embeddings
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"item_embeddings must be a non-empty [num_items, dim] matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("item_embeddings contain NaN or infinite values")
    return array


def as_item_ids(item_ids: np.ndarray | tf.Tensor | Sequence[str], num_items: int) -> np.ndarray:
    """Checks and converts item ids to a numpy object array of ``bytes`` ``[num_items]``."""
    if isinstance(item_ids, tf.Tensor):
        item_ids = item_ids.numpy()
    ids = [i if isinstance(i, bytes) else str(i).encode("utf-8") for i in np.asarray(item_ids).reshape(-1)]
    if len(ids) != num_items:
        raise ValueError(f"got {len(ids)} item ids for {num_items} item embeddings")
    if b"" in ids:
        raise ValueError('item ids must be non-empty: "" is the padding value of exclude_item_ids')
    if len(set(ids)) != len(ids):
        seen: set[bytes] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"item ids must be unique; {dup.decode('utf-8', 'replace')!r} appears more than once")
    return np.array(ids, dtype=object)


def with_history(history_item_ids: tf.Tensor, exclude_item_ids: tf.Tensor) -> tf.Tensor:
    """One exclusion list per row: a request's history items, then its ``exclude_item_ids``.

    The history's width counts in ``e``, so ``k`` results remain after the over-fetch;
    its "" padding, and any id not in the catalog, matches no item.

    Args:
      history_item_ids: string ``[batch, h]``, "" padded.
      exclude_item_ids: string ``[batch, e]``, "" padded.

    Returns:
      string ``[batch, h + e]``.
    """
    return tf.concat([tf.convert_to_tensor(history_item_ids, tf.string),
                      tf.convert_to_tensor(exclude_item_ids, tf.string)], axis=1)


def init_catalog(index: tf.Module, item_embeddings, item_ids, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Checks an index's catalog arguments and sets ``k``, ``num_items``, ``dim`` and ``k_out = min(k, N)`` on it.

    Args:
      index: the index being constructed.
      item_embeddings: float32 ``[N, d]``; item_ids: ``[N]`` unique, non-empty strings; k: results per query.

    Returns:
      ``(embeddings float32 [N, d], ids bytes object array [N])``, checked.
    """
    embeddings = as_embeddings(item_embeddings)
    ids = as_item_ids(item_ids, embeddings.shape[0])
    index.k = check_k(k)
    index.num_items, index.dim = embeddings.shape
    index.k_out = min(index.k, index.num_items)
    return embeddings, ids


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def empty_exclusion(query_embeddings: tf.Tensor) -> tf.Tensor:
    """A ``[batch, 0]`` string tensor: "exclude nothing" in the padded format."""
    return tf.zeros([tf.shape(query_embeddings)[0], 0], dtype=tf.string)


# Column-chunk width of chunked_top_k. 64 measured fastest for 200k-1M wide rows.
TOP_K_CHUNK = 64
# Rows narrower than this use tf.math.top_k directly (the chunking's few extra
# ops cost more than they save).
CHUNKED_TOP_K_MIN_WIDTH = 16384


def chunked_top_k(scores: tf.Tensor, k: tf.Tensor | int, chunk: int = TOP_K_CHUNK) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact ``tf.math.top_k(scores, k, sorted=True)`` for wide rows, several times faster.

    TF's CPU TopKV2 costs a few ns per element (tens of ms for [64, 1M]),
    more than the matmul that produced the scores. Instead: split each row
    into chunks of ``chunk`` columns, take the ``k`` chunks with the largest
    maxima (a cheap reduce_max plus a top_k over ``width / chunk`` values),
    then top_k over just those ``k * chunk`` scores. Exact: an item in the
    top k has at most ``k - 1`` better items, so at most ``k - 1`` chunks can
    have a larger maximum than its own chunk.

    Args:
      scores: float32 ``[batch, width]`` (width may be dynamic).
      k: int scalar, ``1 <= k <= width``.

    Returns:
      ``(values float32 [batch, k], indices int32 [batch, k])``, best first;
      equal scores may come in a different order than ``tf.math.top_k``.
    """
    batch, width = tf.shape(scores)[0], tf.shape(scores)[1]
    num_chunks = (width + chunk - 1) // chunk
    padded = tf.pad(scores, [[0, 0], [0, num_chunks * chunk - width]], constant_values=NEG_INF)
    blocks = tf.reshape(padded, [batch, num_chunks, chunk])
    _, best_chunks = tf.math.top_k(tf.reduce_max(blocks, axis=2), k=tf.minimum(k, num_chunks), sorted=False)
    candidates = tf.reshape(tf.gather(blocks, best_chunks, batch_dims=1), [batch, -1])  # [B, k' * chunk]
    values, positions = tf.math.top_k(candidates, k=k, sorted=True)
    columns = tf.gather(best_chunks, positions // chunk, batch_dims=1) * chunk + positions % chunk
    # Padding columns only surface with -inf values, but keep indices in range.
    return values, tf.minimum(columns, width - 1)


def best_over_steps(step, steps: int, fetch: tf.Tensor, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The best ``fetch`` candidates of a scan in ``steps`` loop steps, one step at a time (bounded memory).

    Args:
      step: ``i`` -> ``(values float32 [B, <= fetch], columns int32 [B, <= fetch], offset int32)``, the step's
        best scores and their columns within the step; ``offset`` is added to every column (a short step's
        padding too, at ``-inf``).
      steps: loop steps; fetch: int32 scalar >= 1; batch: B.
    Returns:
      ``(values float32 [B, fetch], slots int32 [B, fetch])``, best first.
    """
    def padded(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        values, columns, offset = step(i)
        short = fetch - tf.shape(values)[1]  # padded after the selection (small), not before it
        values = tf.pad(values, [[0, 0], [0, short]], constant_values=NEG_INF)
        return values, tf.pad(columns, [[0, 0], [0, short]]) + offset

    values, slots = tf.map_fn(
        padded,
        tf.range(steps),
        fn_output_signature=(tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.int32)),
        parallel_iterations=1,  # the ops inside already use every core
    )  # [steps, B, fetch]
    values = tf.reshape(tf.transpose(values, [1, 0, 2]), [batch, -1])
    slots = tf.reshape(tf.transpose(slots, [1, 0, 2]), [batch, -1])
    top_values, positions = tf.math.top_k(values, k=fetch, sorted=True)
    return top_values, tf.gather(slots, positions, batch_dims=1)


def top_k(scores: tf.Tensor, k: tf.Tensor | int) -> tuple[tf.Tensor, tf.Tensor]:
    """``tf.math.top_k(sorted=True)``, switching to :func:`chunked_top_k` for wide or unknown-width rows."""
    width = scores.shape[1]
    if width is not None and width < CHUNKED_TOP_K_MIN_WIDTH:
        return tf.math.top_k(scores, k=k, sorted=True)
    return chunked_top_k(scores, k)


def is_member(values: tf.Tensor, members: tf.Tensor) -> tf.Tensor:
    """Row-wise set membership: ``out[b, i] = values[b, i] in members[b, :]``.

    Costs O((c + e) log e) per row, not the O(c * e) of comparing every pair
    (a hostile request with many exclusions would otherwise build a
    ``[batch, c, e]`` grid): each row's members are fingerprinted to int64 and
    sorted, values are looked up by binary search, and the string found there
    is compared exactly, so a fingerprint match alone never excludes an item.
    (Two *different* member strings with the same 64-bit fingerprint could hide
    one another: odds of about e^2 / 2^64 per row.)

    Args:
      values: string ``[batch, c]``.
      members: string ``[batch, e]`` (``e`` may be 0).

    Returns:
      bool ``[batch, c]``.
    """
    e = tf.shape(members)[1]

    def lookup():
        member_keys = tf.strings.to_hash_bucket_fast(members, _FINGERPRINT_BUCKETS)
        order = tf.argsort(member_keys, axis=1, stable=True)
        sorted_keys = tf.gather(member_keys, order, batch_dims=1)
        sorted_members = tf.gather(members, order, batch_dims=1)
        value_keys = tf.strings.to_hash_bucket_fast(values, _FINGERPRINT_BUCKETS)
        position = tf.minimum(tf.searchsorted(sorted_keys, value_keys, side="left"), e - 1)
        found = tf.gather(sorted_members, position, batch_dims=1)
        return tf.equal(found, values)

    return tf.cond(e > 0, lookup, lambda: tf.zeros(tf.shape(values), tf.bool))


# Fingerprints live in [0, 2^63 - 1): to_hash_bucket_fast takes the bucket count as int64.
_FINGERPRINT_BUCKETS = (1 << 63) - 1


def filter_excluded(
    scores: tf.Tensor, indices: tf.Tensor, item_ids: tf.Tensor, exclude_item_ids: tf.Tensor, k: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Drops excluded items from an over-fetched, best-first candidate list.

    Args:
      scores: float32 ``[batch, c]`` candidate scores (``-inf`` = no candidate).
      indices: int ``[batch, c]`` catalog rows of the candidates (any value
        where the score is ``-inf``).
      item_ids: string ``[num_items]`` catalog ids.
      exclude_item_ids: string ``[batch, e]``, padded with ``""``.
      k: results wanted per query.

    Returns:
      ``(scores float32 [batch, min(k, c)], item_ids string [batch, min(k, c)],
      num_valid int32 [batch])``, best first; ``num_valid`` counts the results
      with a finite score (the others are padding with id ``""``).
    """
    safe_indices = tf.maximum(indices, 0)
    candidate_ids = tf.gather(item_ids, safe_indices)
    is_excluded = is_member(candidate_ids, exclude_item_ids)
    scores = tf.where(is_excluded, tf.constant(NEG_INF, tf.float32), scores)
    k_out = tf.minimum(k, tf.shape(scores)[1])
    top_scores, positions = tf.math.top_k(scores, k=k_out, sorted=True)  # c = k + e: narrow
    top_ids = tf.gather(candidate_ids, positions, batch_dims=1)
    valid = tf.math.is_finite(top_scores)
    top_ids = tf.where(valid, top_ids, tf.constant("", tf.string))
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    return top_scores, top_ids, num_valid


def params_jsonable(params: dict[str, Any]) -> dict[str, Any]:
    """Turns numpy scalars into Python ones so ``json.dumps`` accepts them."""
    return {key: (value.item() if isinstance(value, np.generic) else value) for key, value in params.items()}


def exact_rows_where_short(
    scores: tf.Tensor,
    item_ids: tf.Tensor,
    num_valid: tf.Tensor,
    k: int,
    queries: tf.Tensor,
    exclude_item_ids: tf.Tensor,
    exact_search,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Re-answers, exactly, only the queries an approximate search left short.

    An approximate candidate set can hold fewer than ``k`` usable items (tiny
    partitions, heavy exclusion). Those rows are recomputed with
    ``exact_search(queries [b, d], exclude [b, e]) -> (scores [b, k], ids [b, k])``
    and scattered back; the ``tf.cond`` skips all of it in the common case.

    Args:
      scores, item_ids: approximate results ``[B, k]``.
      num_valid: int32 ``[B]`` usable results per row.
      k: results per row.
      queries: float32 ``[B, d]``; exclude_item_ids: string ``[B, e]``.

    Returns:
      ``(scores float32 [B, k], item_ids string [B, k])``.
    """
    short = num_valid < k

    def patch():
        rows = tf.where(short)  # [b, 1] int64
        # tf.gather, not gather_nd: gather_nd rejects an empty [B, 0] exclusion matrix.
        fixed_scores, fixed_ids = exact_search(
            tf.gather(queries, rows[:, 0]), tf.gather(exclude_item_ids, rows[:, 0])
        )
        return (
            tf.tensor_scatter_nd_update(scores, rows, fixed_scores),
            tf.tensor_scatter_nd_update(item_ids, rows, fixed_ids),
        )

    return tf.cond(tf.reduce_any(short), patch, lambda: (scores, item_ids))


def search_inputs(query_embeddings, exclude_item_ids) -> tuple[tf.Tensor, tf.Tensor]:
    """Every index's ``search`` arguments as tensors: (float32 [B, d], string [B, e]); no exclusions -> [B, 0]."""
    query_embeddings = tf.convert_to_tensor(query_embeddings, tf.float32)
    if exclude_item_ids is None:
        exclude_item_ids = empty_exclusion(query_embeddings)
    return query_embeddings, tf.convert_to_tensor(exclude_item_ids, tf.string)


def with_static_k(scores: tf.Tensor, item_ids: tf.Tensor, k_out: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Static k' helps callers' signatures (outputs [None, k'], not [None, None])."""
    return tf.ensure_shape(scores, [None, k_out]), tf.ensure_shape(item_ids, [None, k_out])


def exact_search(queries: tf.Tensor, item_embeddings: tf.Tensor, item_ids: tf.Tensor, exclude_item_ids: tf.Tensor,
                 k_out: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact dot-product top-k' over ``item_embeddings`` [N, d], never returning an excluded id.

    Over-fetches k' + e so that k' results survive dropping the excluded ones;
    top_k fails if asked for more than N, hence the clamp.
    Returns (scores float32 [B, k'], item_ids string [B, k']).
    """
    scores = tf.matmul(queries, item_embeddings, transpose_b=True)  # [B, N]
    fetch = tf.minimum(k_out + tf.shape(exclude_item_ids)[1], tf.shape(item_embeddings)[0])
    top_scores, top_rows = top_k(scores, fetch)
    top_scores, top_ids, _ = filter_excluded(top_scores, top_rows, item_ids, exclude_item_ids, k_out)
    return top_scores, top_ids


class ApproximateIndex(tf.Module):
    """What IVF and ScaNN share: approximate candidates, exact answers for the rows they leave short.

    Subclasses set ``k_out`` and implement ``_search_approx(queries, exclude) -> (scores [B, k'],
    ids [B, k'], num_valid int32 [B])`` and ``_search_exact(queries, exclude) -> (scores, ids)``.
    """

    def search(
        self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Approximate top-k items by dot product.

        Args:
          query_embeddings: float32 ``[batch, dim]``.
          exclude_item_ids: optional string ``[batch, e]`` padded with ``""``
            (``e`` may be 0); these ids are never returned.

        Returns:
          ``(scores float32 [batch, k'], item_ids string [batch, k'])`` with
          ``k' = min(k, num_items)``, best first, exact dot-product scores of
          the returned items. Trailing slots are ``-inf`` / ``""`` only if
          exclusion leaves fewer than ``k'`` items in the whole catalog.
        """
        query_embeddings, exclude_item_ids = search_inputs(query_embeddings, exclude_item_ids)
        scores, ids, num_valid = self._search_approx(query_embeddings, exclude_item_ids)
        scores, ids = exact_rows_where_short(
            scores, ids, num_valid, self.k_out, query_embeddings, exclude_item_ids, self._search_exact
        )
        return with_static_k(scores, ids, self.k_out)
