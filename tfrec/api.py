"""The two API calls that are not training stages: resolving a config and loading an export."""

from __future__ import annotations

import os
from typing import Iterable

from tfrec import config as config_lib


def load_config(path: str | os.PathLike | None = None, *, preset: str | None = None,
                overrides: Iterable[str] = ()) -> config_lib.Config:
    """The validated config, resolved as ``python -m trainer.task`` does.

    Order: dataclass defaults -> ``preset`` (``tfrec/presets/<preset>.yaml``,
    default ``movielens``) -> the YAML file at ``path`` -> each ``overrides``
    entry (``"dotted.key=value"``) in order -> validation.

    Raises:
      tfrec.errors.ConfigError: an unknown key, a wrong type or an out-of-range value, named.
    """
    return config_lib.build(preset or "movielens", str(path) if path is not None else None, list(overrides))


def register_ops(scann: bool = True) -> None:
    """Registers the custom ops a tfrec SavedModel may hold; call before ``tf.saved_model.load``.

    The SavedModel tokenises in-graph with tensorflow-text ops (``FastBertNormalize``, ...)
    and a ScaNN index uses ScaNN's (``Scann>ScannSearchBatched``, ...); neither is
    registered in a fresh interpreter until its Python package is imported.

    Args:
      scann: also ScaNN's ops, when the package is installed (without it a ScaNN
        SavedModel fails to load with TensorFlow's "Op type not registered").
    """
    import tensorflow_text  # noqa: F401  (registers the tokeniser ops; heavy, so only when loading)

    if scann:
        try:
            import scann as _scann  # noqa: F401  (registers the Scann>* ops; an optional package)
        except ImportError:
            pass


def load_export(path: str | os.PathLike):
    """Loads an exported SavedModel version folder (``Run.export_dir``) with the ops it needs
    (:func:`register_ops` first, then ``tf.saved_model.load``); also any SavedModel of
    :func:`tfrec.index.save`.

    Returns:
      The loaded object; ``.signatures["serving_default"](query_text=string [batch],
      exclude_item_ids=string [batch, e])`` -> ``{"item_ids": string [batch, k],
      "scores": float32 [batch, k]}``.
    """
    import tensorflow as tf  # tfrec.api stays light: load_config needs no TensorFlow

    register_ops()
    return tf.saved_model.load(str(path))
