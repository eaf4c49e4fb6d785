"""ScaNN approximate retrieval (tree + anisotropic asymmetric hashing + reorder).

Build: ScaNN's own TF-op builder,
``scann_ops.builder(db, k, "dot_product").tree(...).score_ah(2,
anisotropic_quantization_threshold=0.2).reorder(reorder_k).build()``; the
searcher is serialised into variables (``ScannState``) tracked by this module,
exactly like ``tfrs.layers.factorized_top_k.ScaNN`` does.

Search parameters are chosen from measured recall, not set by hand: unless
given, ``num_leaves_to_search`` and ``reorder_k`` are calibrated on sample
queries (``calibration_queries``, or catalog items standing in for queries)
against their exact top-k. For each candidate ``reorder_k`` the fewest leaves
reaching ``target_recall`` (default 0.99) recall@k are found by bisection, and
the pair with the lowest estimated cost per query (items scored from their
codes + ``REORDER_COST`` per exact re-score) is kept.

Usage::

    index = ScannIndex(item_embeddings, item_ids, k=10)
    scores, ids = index.search(query_embeddings, exclude_item_ids=seen)
    tf.saved_model.save(module_holding_index, path, options=save_options())
    # loading process: tfrec.load_export(path) (registers ScaNN's ops first)

Serving caveats: the graph uses ScaNN's custom ops (``Scann>...``), so saving
needs ``save_options()`` (``namespace_whitelist=["Scann"]``), loading in Python
needs ``import scann`` first (:func:`tfrec.api.register_ops`), and stock
TensorFlow Serving cannot run it (use the ScaNN-enabled TF Serving build, or
``IVFIndex`` which is core-ops only).
ScaNN refuses catalogs of fewer than 16 items (its asymmetric hashing trains 16
clusters per block); ``ScannIndex`` raises ``ValueError`` below that and
``tfrec.index.build_index`` falls back to brute force well before it.

Exclusion over-fetches ``k + e`` neighbours (raising ScaNN's pre-reorder count
to match). ScaNN pads missing neighbours with index 0 and a NaN distance; those
are dropped, and a query left with fewer than ``k'`` usable results is
answered by exact search over the float32 dataset ScaNN already keeps for
reordering (no extra copy).
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

import math
import uuid
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfrec.index.base as base
import tfrec.index.ivf_build as ivf_build

# ScaNN's asymmetric hashing trains 16 centres per block on the data.
MIN_ITEMS = 16
# Default leaves_to_search scans at least this many candidates per result.
CANDIDATES_PER_RESULT = 20
# Calibration's cost estimate of one exact re-score, in items scored from their
# codes: a random read of a 4d-byte float32 row against a 16-entry table lookup
# per 2 dimensions of a sequentially read code.
REORDER_COST = 32
# Calibration tries these multiples of k for reorder_k, and these fractions of the leaves.
_REORDER_FACTORS = (2, 4, 10, 20, 50)
_LEAF_FRACTIONS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


def save_options() -> tf.saved_model.SaveOptions:
    """A fresh ``SaveOptions`` allowing ScaNN's custom ops (namespace ``Scann``) in a SavedModel."""
    return tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])


def scann_ops():
    """Imports ScaNN's TF ops lazily (importing registers them with TF)."""
    try:
        import scann  # noqa: F401  (registers the Scann>* ops)
        from scann.scann_ops.py import scann_ops as ops
    except ImportError as error:
        raise ImportError(
            "the 'scann' index needs the scann package (pip install 'scann[tf]'); "
            "use index kind 'ivf' or 'brute_force' without it"
        ) from error
    return ops


def default_num_leaves(num_items: int) -> int:
    """~sqrt(N) leaves (ScaNN's guidance), at least 1 and with >= 16 items per leaf."""
    return max(1, min(int(round(math.sqrt(num_items))), num_items // MIN_ITEMS))


def default_leaves_to_search(num_leaves: int, num_items: int, k: int) -> int:
    """~5% of the leaves (ScaNN's README example: 100 of 2000), at least 8,
    and enough leaves to hold ~20 k candidates (small catalogs, large k)."""
    for_k = math.ceil(CANDIDATES_PER_RESULT * k * num_leaves / num_items)
    return min(num_leaves, max(8, math.ceil(0.05 * num_leaves), for_k))


class ScannIndex(base.ApproximateIndex):
    """Approximate dot-product top-k with ScaNN.

    Args:
      item_embeddings: float32 ``[num_items, dim]``, ``num_items >= 16``.
      item_ids: ``[num_items]`` unique, non-empty strings.
      k: results per query; searches return ``k' = min(k, num_items)``.
      num_leaves: partitioning tree leaves; default ``~sqrt(N)``.
      num_leaves_to_search: leaves scanned per query; default: calibrated.
      reorder_k: candidates re-scored exactly (never below ``k``); default: calibrated.
      target_recall: recall@k calibration must reach (ignored when both
        parameters above are given); if no setting reaches it, the most
        thorough one tried is kept.
      calibration_queries: optional float32 ``[Q, dim]`` representative
        queries; default: 1000 catalog items.
      training_sample_size: points used to train the tree and the hashing;
        default ``min(N, 100_000)``.
      anisotropic_quantization_threshold: ScaNN's AVQ threshold (0.2 is the
        value ScaNN recommends for dot product).
      dimensions_per_block: asymmetric-hashing block width.
      name: ``tf.Module`` name.
    """

    kind = "scann"

    def __init__(
        self,
        item_embeddings: np.ndarray | tf.Tensor,
        item_ids: np.ndarray | tf.Tensor | Sequence[str],
        k: int,
        num_leaves: int | None = None,
        num_leaves_to_search: int | None = None,
        reorder_k: int | None = None,
        target_recall: float = 0.99,
        calibration_queries: np.ndarray | tf.Tensor | None = None,
        training_sample_size: int | None = None,
        anisotropic_quantization_threshold: float = 0.2,
        dimensions_per_block: int = 2,
        name: str | None = None,
    ):
        super().__init__(name=name)
        ops = scann_ops()
        embeddings, ids = base.init_catalog(self, item_embeddings, item_ids, k)
        if self.num_items < MIN_ITEMS:
            raise ValueError(f"ScaNN needs at least {MIN_ITEMS} items, got {self.num_items}; use BruteForceIndex")
        self.num_leaves = int(min(max(1, num_leaves or default_num_leaves(self.num_items)), self.num_items))
        self.training_sample_size = int(min(self.num_items, training_sample_size or 100_000))
        self.anisotropic_quantization_threshold = float(anisotropic_quantization_threshold)
        self.dimensions_per_block = int(dimensions_per_block)
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        build_leaves = num_leaves_to_search or default_leaves_to_search(self.num_leaves, self.num_items, self.k_out)
        build_reorder = reorder_k or max(100, 4 * self.k)

        searcher = (
            ops.builder(embeddings, self.k_out, "dot_product")
            .tree(
                num_leaves=self.num_leaves,
                num_leaves_to_search=int(min(max(1, build_leaves), self.num_leaves)),
                training_sample_size=self.training_sample_size,
            )
            .score_ah(
                self.dimensions_per_block,
                anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
            )
            .reorder(int(max(self.k_out, build_reorder)))
            # A unique shared_name stops two indexes in one process from
            # silently sharing one searcher resource.
            .build(shared_name=f"tfrec_scann_{uuid.uuid4()}")
        )
        self.target_recall: float | None = None
        self.calibrated_recall: float | None = None
        if num_leaves_to_search is None or reorder_k is None:
            self.target_recall = float(target_recall)
            if calibration_queries is not None:
                calibration_queries = base.as_embeddings(calibration_queries)
            num_leaves_to_search, reorder_k, self.calibrated_recall = self._calibrate(
                searcher, embeddings, num_leaves_to_search, reorder_k, calibration_queries)
        self.num_leaves_to_search = int(min(max(1, num_leaves_to_search), self.num_leaves))
        self.reorder_k = int(max(self.k_out, reorder_k))
        # Variables holding the serialised searcher (config, tree, codes and
        # the float32 dataset used for reordering); tracked for SavedModel.
        self.scann_state = searcher.serialize_to_module()
        self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")

    def _search_approx(
        self, queries: tf.Tensor, exclude_item_ids: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """ScaNN search; returns (scores [B, k'], ids [B, k'], num_valid int32 [B])."""
        searcher = scann_ops().searcher_from_module(self.scann_state)
        fetch = tf.minimum(self.k_out + tf.shape(exclude_item_ids)[1], self.num_items)
        result = searcher.search_batched_parallel(
            queries,
            final_num_neighbors=fetch,
            pre_reorder_num_neighbors=tf.maximum(fetch, self.reorder_k),
            leaves_to_search=self.num_leaves_to_search,
        )
        rows, scores = result.indices, result.distances  # [B, <= fetch]
        # ScaNN pads missing neighbours with (index 0, NaN) and may return
        # fewer columns than asked: mark them invalid, pad to >= k' columns.
        scores = tf.where(tf.math.is_nan(scores), tf.constant(base.NEG_INF, tf.float32), scores)
        missing = tf.maximum(0, self.k_out - tf.shape(rows)[1])
        rows = tf.pad(rows, [[0, 0], [0, missing]])
        scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=base.NEG_INF)
        return base.filter_excluded(scores, rows, self.item_ids, exclude_item_ids, self.k_out)

    def _calibrate(self, searcher, embeddings: np.ndarray, leaves: int | None, reorder: int | None,
                   queries: np.ndarray | None) -> tuple[int, int, float]:
        """Cheapest (leaves_to_search, reorder_k) whose measured recall@k reaches the target; and that recall."""
        queries, truth, self_rows = ivf_build.calibration_set(embeddings, self.k_out, queries)
        if truth.size == 0:
            return leaves or self.num_leaves, reorder or self.k_out, 1.0
        extra = 0 if self_rows is None else 1  # the query's own row comes back first: drop it

        def recall(leaves_to_search: int, reorder_k: int) -> float:
            rows = searcher.search_batched_parallel(
                queries, final_num_neighbors=self.k_out + extra,
                pre_reorder_num_neighbors=max(reorder_k, self.k_out + extra), leaves_to_search=leaves_to_search,
            ).indices.numpy()
            found = [[r for r in row if self_rows is None or r != self_rows[i]][: self.k_out]
                     for i, row in enumerate(rows)]
            return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))

        leaf_options = [leaves] if leaves else sorted({max(1, math.ceil(f * self.num_leaves)) for f in _LEAF_FRACTIONS})
        reorder_options = [reorder] if reorder else sorted(
            {min(self.num_items, max(self.k_out, f * self.k_out)) for f in _REORDER_FACTORS})
        best = None
        for reorder_k in reorder_options:
            low, high = 0, len(leaf_options) - 1  # bisect: recall grows with the leaves searched
            reached = None
            while low <= high:
                middle = (low + high) // 2
                measured = recall(leaf_options[middle], reorder_k)
                if measured >= self.target_recall:
                    reached, high = (leaf_options[middle], measured), middle - 1
                else:
                    low = middle + 1
            if reached is None:
                continue
            cost = reached[0] * self.num_items / self.num_leaves + REORDER_COST * reorder_k
            if best is None or cost < best[0]:
                best = (cost, reached[0], reorder_k, reached[1])
        if best is None:  # nothing reached the target: the most thorough setting tried
            return leaf_options[-1], reorder_options[-1], recall(leaf_options[-1], reorder_options[-1])
        return best[1], best[2], best[3]

    def _search_exact(self, queries: tf.Tensor, exclude_item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Exact search over ScaNN's float32 reordering dataset ``[N, d]``."""
        dataset = tf.reshape(self.scann_state.dataset, [self.num_items, self.dim])
        return base.exact_search(queries, dataset, self.item_ids, exclude_item_ids, self.k_out)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the index, for reports."""
        return base.params_jsonable(
            {
                "kind": self.kind,
                "k": self.k,
                "num_items": self.num_items,
                "dim": self.dim,
                "num_leaves": self.num_leaves,
                "num_leaves_to_search": self.num_leaves_to_search,
                "reorder_k": self.reorder_k,
                "target_recall": self.target_recall,
                "calibrated_recall": self.calibrated_recall,
                "training_sample_size": self.training_sample_size,
                "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
                "dimensions_per_block": self.dimensions_per_block,
                "distance": "dot_product",
            }
        )
