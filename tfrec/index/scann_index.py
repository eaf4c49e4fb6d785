"""ScaNN approximate retrieval (tree + anisotropic asymmetric hashing + reorder).

Build: ScaNN's own TF-op builder,
``scann_ops.builder(db, k, "dot_product").tree(...).score_ah(2,
anisotropic_quantization_threshold=0.2).reorder(reorder_k).build()``; the
searcher is serialised into variables (``ScannState``) tracked by this module,
exactly like ``tfrs.layers.factorized_top_k.ScaNN`` does.

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

# ScaNN's asymmetric hashing trains 16 centres per block on the data.
MIN_ITEMS = 16
# Default leaves_to_search scans at least this many candidates per result.
CANDIDATES_PER_RESULT = 20


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
      num_leaves_to_search: leaves scanned per query; default
        ``default_leaves_to_search`` (~5% of leaves, more for small catalogs).
      reorder_k: candidates re-scored exactly; default ``max(100, 4 * k)``,
        never below ``k``.
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
        training_sample_size: int | None = None,
        anisotropic_quantization_threshold: float = 0.2,
        dimensions_per_block: int = 2,
        name: str | None = None,
    ):
        super().__init__(name=name)
        ops = scann_ops()
        embeddings = base.as_embeddings(item_embeddings)
        ids = base.as_item_ids(item_ids, embeddings.shape[0])
        self.k = base.check_k(k)
        self.num_items, self.dim = embeddings.shape
        if self.num_items < MIN_ITEMS:
            raise ValueError(f"ScaNN needs at least {MIN_ITEMS} items, got {self.num_items}; use BruteForceIndex")
        self.k_out = min(self.k, self.num_items)
        self.num_leaves = int(min(max(1, num_leaves or default_num_leaves(self.num_items)), self.num_items))
        if num_leaves_to_search is None:
            num_leaves_to_search = default_leaves_to_search(self.num_leaves, self.num_items, self.k_out)
        self.num_leaves_to_search = int(min(max(1, num_leaves_to_search), self.num_leaves))
        self.reorder_k = int(max(self.k_out, reorder_k or max(100, 4 * self.k)))
        self.training_sample_size = int(min(self.num_items, training_sample_size or 100_000))
        self.anisotropic_quantization_threshold = float(anisotropic_quantization_threshold)
        self.dimensions_per_block = int(dimensions_per_block)

        searcher = (
            ops.builder(embeddings, self.k_out, "dot_product")
            .tree(
                num_leaves=self.num_leaves,
                num_leaves_to_search=self.num_leaves_to_search,
                training_sample_size=self.training_sample_size,
            )
            .score_ah(
                self.dimensions_per_block,
                anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
            )
            .reorder(self.reorder_k)
            # A unique shared_name stops two indexes in one process from
            # silently sharing one searcher resource.
            .build(shared_name=f"tfrec_scann_{uuid.uuid4()}")
        )
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
        )
        rows, scores = result.indices, result.distances  # [B, <= fetch]
        # ScaNN pads missing neighbours with (index 0, NaN) and may return
        # fewer columns than asked: mark them invalid, pad to >= k' columns.
        scores = tf.where(tf.math.is_nan(scores), tf.constant(base.NEG_INF, tf.float32), scores)
        missing = tf.maximum(0, self.k_out - tf.shape(rows)[1])
        rows = tf.pad(rows, [[0, 0], [0, missing]])
        scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=base.NEG_INF)
        return base.filter_excluded(scores, rows, self.item_ids, exclude_item_ids, self.k_out)

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
                "training_sample_size": self.training_sample_size,
                "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
                "dimensions_per_block": self.dimensions_per_block,
                "distance": "dot_product",
            }
        )
