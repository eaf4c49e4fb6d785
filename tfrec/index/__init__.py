"""Retrieval indexes over item embeddings: exact, IVF (core TF ops), their int8 forms, and ScaNN.

Every index is a ``tf.Module`` built from ``item_embeddings`` float32
``[N, d]`` and unique, non-empty ``item_ids`` ``[N]``, with

* ``search(query_embeddings float32 [B, d], exclude_item_ids=None | string
  [B, e] "" padded) -> (scores float32 [B, k'], item_ids string [B, k'])``,
  ``k' = min(k, N)``, best first, dot-product scores, excluded ids never
  returned. Works eagerly, inside a ``tf.function`` with unknown ``B``/``e``,
  and after ``tf.saved_model.save`` + ``load`` of a module holding the index.
* ``params() -> dict`` (JSON-serialisable, for reports), ``kind``, ``k``,
  ``num_items``, ``dim``.

Kinds:

* ``brute_force`` (:class:`BruteForceIndex`): exact; core TF ops.
* ``brute_force_int8`` (:class:`BruteForceInt8Index`): every item scored from
  per-item int8 codes (about a quarter of the memory); core TF ops.
* ``ivf`` (:class:`IVFIndex`): k-means inverted file scanned as int8 blocks,
  best candidates re-scored exactly from float32; core TF ops only, so stock
  TensorFlow Serving runs it. ``nprobe`` defaults to the smallest value whose
  measured recall@k reaches ``target_recall`` (0.95) on a build-time sample.
* ``ivf_int8`` (``IVFIndex(quantization="int8")``): the same without the
  float32 copy.
* ``scann`` (:class:`ScannIndex`): ScaNN tree + anisotropic hashing + reorder,
  leaves searched and reorder size chosen from measured recall@k (0.99);
  needs ``save_options_for(index)`` when saving, ``tfrec.load_export`` to
  load, and a ScaNN-enabled TF Serving.

``build_index(kind, ...)`` falls back to brute force for catalogs smaller than
``APPROXIMATE_MIN_ITEMS`` (1000): there a full matmul costs well under a
millisecond, so an approximate index only loses recall (and ScaNN cannot even
build below 16 items).

Usage::

    import tfrec
    from tfrec import index as index_lib

    idx, note = index_lib.build_index("ivf", item_embeddings, item_ids, k=100)
    if note:
        log.info(note)                     # e.g. fell back to brute force
    exact = index_lib.BruteForceIndex(item_embeddings, item_ids, k=100)
    recall = index_lib.recall_against_exact(idx, exact, query_embeddings, k=10)
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfrec.index.brute_force import BruteForceIndex
from tfrec.index.brute_force_int8 import BruteForceInt8Index
from tfrec.index.ivf import IVFIndex
from tfrec.index.saving import SearchModule, save, save_options_for
from tfrec.index.scann_index import ScannIndex, save_options

# Below this many items build_index returns BruteForceIndex for "ivf"/"scann".
APPROXIMATE_MIN_ITEMS = 1000

KINDS = ("brute_force", "brute_force_int8", "ivf", "ivf_int8", "scann")
# The int8 form of each kind that has one (export.quantization: int8).
INT8_KINDS = {"brute_force": "brute_force_int8", "ivf": "ivf_int8"}

__all__ = [
    "APPROXIMATE_MIN_ITEMS",
    "KINDS",
    "BruteForceIndex",
    "BruteForceInt8Index",
    "INT8_KINDS",
    "IVFIndex",
    "ScannIndex",
    "SearchModule",
    "build_index",
    "recall_against_exact",
    "save",
    "save_options",
    "save_options_for",
]


def build_index(
    kind: str,
    item_embeddings: np.ndarray | tf.Tensor,
    item_ids: np.ndarray | tf.Tensor | Sequence[str],
    k: int,
    **params: Any,
) -> tuple[tf.Module, str | None]:
    """Builds an index of the given kind, or brute force when the catalog is small.

    Args:
      kind: one of ``KINDS``.
      item_embeddings: float32 ``[N, d]``.
      item_ids: ``[N]`` unique, non-empty strings.
      k: results per query.
      **params: constructor arguments of the chosen index (e.g. ``nprobe``,
        ``num_leaves``); ignored when falling back.

    Returns:
      ``(index, note)``: ``note`` is a one-line message when the requested
      kind was replaced by brute force, else None.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    num_items = int(np.shape(item_embeddings)[0])
    if kind == "brute_force":
        return BruteForceIndex(item_embeddings, item_ids, k, **params), None
    if kind == "brute_force_int8":
        return BruteForceInt8Index(item_embeddings, item_ids, k, **params), None
    if num_items < APPROXIMATE_MIN_ITEMS:
        fallback = "brute_force_int8" if kind == "ivf_int8" else "brute_force"
        note = (
            f"{kind} index not built: catalog has {num_items} items (< {APPROXIMATE_MIN_ITEMS}, where a full "
            f"scan is as fast); using {fallback}"
        )
        return build_index(fallback, item_embeddings, item_ids, k)[0], note
    if kind in ("ivf", "ivf_int8"):
        quantization = "int8" if kind == "ivf_int8" else "none"
        return IVFIndex(item_embeddings, item_ids, k, quantization=quantization, **params), None
    return ScannIndex(item_embeddings, item_ids, k, **params), None


def recall_against_exact(
    index: Any, exact_index: Any, query_embeddings: np.ndarray | tf.Tensor, k: int = 10, batch_size: int = 64,
    query_text: Sequence[str] | None = None,
) -> float:
    """Mean fraction of the exact top-k ids that ``index`` also returns in its top-k.

    Args:
      index: anything with ``search(queries [B, d], exclude [B, 0])`` returning
        ``(scores, item_ids)``: an index, a ``SearchModule`` or a loaded one.
      exact_index: the same, exact (normally a ``BruteForceIndex``).
      query_embeddings: float32 ``[num_queries, d]``.
      k: cut-off; both result lists are truncated to their first ``k``.
      batch_size: queries per call (bounds brute force's ``[B, N]`` scores).
      query_text: ``[num_queries]`` the queries' texts: both are hybrid indexes
        (:class:`tfrec.index.hybrid.HybridIndex`), compared on their fused top-k.

    Returns:
      recall@k in [0, 1] (queries whose exact list is empty are skipped).
    """
    queries = np.asarray(query_embeddings, dtype=np.float32)
    fractions: list[float] = []
    for start in range(0, queries.shape[0], batch_size):
        batch = tf.constant(queries[start : start + batch_size])
        no_exclusions = tf.zeros([batch.shape[0], 0], tf.string)
        if query_text is None:
            got, want = (i.search(batch, no_exclusions)[1].numpy()[:, :k] for i in (index, exact_index))
        else:
            text = tf.constant(list(query_text[start : start + batch_size]), tf.string)
            got, want = (i.search_hybrid(batch, text, no_exclusions)[1].numpy()[:, :k] for i in (index, exact_index))
        for got_row, want_row in zip(got, want):
            truth = {item for item in want_row if item}
            if truth:
                fractions.append(len(truth & set(got_row)) / len(truth))
    return float(np.mean(fractions)) if fractions else 1.0
