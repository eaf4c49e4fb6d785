"""Saving and loading an index on its own (tests, benchmarks, debugging).

Production exports put the index inside the retrieval module of
:mod:`tfrec.export.savedmodel`; this is the minimal equivalent:
:class:`SearchModule` holds one index and exposes

* ``search(query_embeddings float32 [B, d], exclude_item_ids string [B, e])
  -> (scores float32 [B, k'], item_ids string [B, k'])`` as a ``tf.function``;
* a ``serving_default`` signature with the same inputs returning
  ``{"scores", "item_ids"}``.

``save(index, path)`` picks ScaNN's save options when needed
(:func:`save_options_for`, what every SavedModel holding an index is saved
with); :func:`tfrec.load_export` loads it, ScaNN's ops registered first.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

from pathlib import Path

import tensorflow as tf

from tfrec.index.scann_index import save_options


def save_options_for(index: tf.Module) -> tf.saved_model.SaveOptions | None:
    """``SaveOptions`` a SavedModel containing ``index`` needs (None = defaults): ScaNN's for a ScaNN index."""
    if getattr(index, "kind", None) == "scann":
        return save_options()
    return None


class SearchModule(tf.Module):
    """A SavedModel root holding one index behind a fixed signature.

    Args:
      index: any ``tfrec.index`` index (has ``dim`` and ``search``).
    """

    def __init__(self, index: tf.Module, name: str | None = None):
        super().__init__(name=name)
        self.index = index
        specs = [
            tf.TensorSpec([None, index.dim], tf.float32, name="query_embeddings"),
            tf.TensorSpec([None, None], tf.string, name="exclude_item_ids"),
        ]
        # Built per instance because the query width depends on the index.
        self.search = tf.function(self._search, input_signature=specs)
        self.serve = tf.function(self._serve, input_signature=specs)

    def _search(self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor):
        return self.index.search(query_embeddings, exclude_item_ids)

    def _serve(self, query_embeddings: tf.Tensor, exclude_item_ids: tf.Tensor):
        scores, item_ids = self.index.search(query_embeddings, exclude_item_ids)
        return {"scores": scores, "item_ids": item_ids}


def save(index: tf.Module, path: str | Path) -> None:
    """Writes ``SearchModule(index)`` as a SavedModel at ``path``."""
    module = SearchModule(index)
    tf.saved_model.save(
        module,
        str(path),
        signatures={"serving_default": module.serve.get_concrete_function()},
        options=save_options_for(index),
    )
