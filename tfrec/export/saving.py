"""``tf.saved_model.save`` for the export's modules, without the Keras layers' traced calls.

Saving a ``tf.Module`` that holds Keras layers makes tf-keras trace every layer's
call (each BERT sublayer, with ``training`` true and false) so that Keras could
rebuild the layers from the SavedModel. Serving reads the module's own
signatures only, and :func:`tfrec.load_export` never asks Keras to rebuild a
layer: those traces were most of the export's time. :func:`save` keeps what a
reloaded layer shows (``variables``, ``trainable_variables``, its sublayers,
its attributes) and leaves out the traced calls alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import tensorflow as tf
# tf-keras's saver of layer calls; Keras 2 offers no public switch for a tf.saved_model.save of a tf.Module
# (Model.save(save_traces=False) also drops each layer's variable lists).
from tf_keras.src.saving.legacy.saved_model import save_impl, serialized_attributes


def _no_functions(layer, serialization_cache) -> dict:
    """What ``save_impl.wrap_layer_functions`` returns for a layer whose calls are not saved."""
    return {name: None for name in serialized_attributes.LayerAttributes.all_functions}


@contextlib.contextmanager
def layer_calls_untraced() -> Iterator[None]:
    """Inside: Keras layers are saved with their objects (variables, sublayers) but no traced calls."""
    original = save_impl.wrap_layer_functions
    save_impl.wrap_layer_functions = _no_functions
    try:
        yield
    finally:
        save_impl.wrap_layer_functions = original


def save(module: tf.Module, folder: str, signatures: dict, options: tf.saved_model.SaveOptions | None = None) -> None:
    """``tf.saved_model.save(module, folder, signatures, options)`` without the Keras layers' traced calls."""
    with layer_calls_untraced():
        tf.saved_model.save(module, folder, signatures=signatures, options=options)
