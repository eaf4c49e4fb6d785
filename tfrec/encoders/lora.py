"""LoRA: low-rank adapters on BERT's attention projections, everything else frozen.

``model.query_encoder.lora_rank: r`` wraps the query, key and value ``Dense``
layers of every transformer layer in :class:`LoRADense`:
``y = x W + b + (x A) B * scale`` with A [in, r] (random) and B [r, out]
(zeros, so training starts from the pretrained encoder exactly), scale =
``alpha / r`` (alpha = r: scale 1). Only A and B train (with
``train.encoder_learning_rate``; LoRA usually wants about 1e-3), a few
thousand parameters per layer instead of the whole layer.

:func:`merge_adapters` folds ``A B * scale`` into W and puts the plain
``Dense`` back, so an export after it holds plain BERT weights (no adapter
variables) and costs nothing extra at serving time; the export does that
inside :func:`adapters_merged`, which puts the adapters back after it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import tensorflow as tf


class LoRADense(tf.keras.layers.Layer):
    """A frozen ``Dense`` plus a trainable low-rank update.

    Args:
      base: the pretrained Dense layer (kept, frozen).
      rank: r, the adapters' inner width.
      alpha: the update's scale is ``alpha / rank``; default ``rank``.
    """

    def __init__(self, base: tf.keras.layers.Dense, rank: int, alpha: float | None = None, **kwargs):
        kwargs.setdefault("name", f"{base.name}_lora")
        super().__init__(**kwargs)
        self.base, self.rank = base, int(rank)
        self.scale = float(alpha if alpha is not None else rank) / self.rank
        self.merged = False

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if not self.base.built:
            self.base.build(input_shape)
        self.lora_a = self.add_weight("lora_a", shape=[input_shape[-1], self.rank],
                                      initializer=tf.keras.initializers.HeUniform(), trainable=True)
        self.lora_b = self.add_weight("lora_b", shape=[self.rank, self.base.units], initializer="zeros",
                                      trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        out = self.base(inputs)
        if self.merged:
            return out
        update = tf.tensordot(tf.tensordot(inputs, self.lora_a, axes=1), self.lora_b, axes=1)
        return out + update * tf.cast(self.scale, update.dtype)

    def merge(self) -> None:
        """W += A B * scale; the adapter path is left out from now on (new traces)."""
        if not self.merged:
            delta = tf.matmul(tf.cast(self.lora_a, tf.float32), tf.cast(self.lora_b, tf.float32)) * self.scale
            self.base.kernel.assign_add(tf.cast(delta, self.base.kernel.dtype))
            self.merged = True


def add_adapters(bert_model, rank: int) -> list[LoRADense]:
    """Wraps every transformer layer's query/key/value projection; freezes all other encoder weights.

    Args:
      bert_model: a Hugging Face ``TFBertModel`` (built here first if needed, so the
        pretrained Dense layers keep their own variable names).
      rank: the adapters' rank (>= 1).
    Returns:
      the adapters, in layer order.
    """
    if not bert_model.built:
        bert_model.build_in_name_scope()
    bert_main_layer = bert_model.bert
    bert_main_layer.embeddings.trainable = False
    if bert_main_layer.pooler is not None:
        bert_main_layer.pooler.trainable = False
    adapters = []
    for layer in bert_main_layer.encoder.layer:
        attention = layer.attention.self_attention
        for name in ("query", "key", "value"):
            wrapped = LoRADense(getattr(attention, name), rank)
            setattr(attention, name, wrapped)
            adapters.append(wrapped)
        # A frozen parent hides its children's weights, so containers stay trainable and leaves freeze.
        layer.trainable = True
        for sub in layer._flatten_layers(include_self=False, recursive=True):
            if not isinstance(sub, LoRADense) and not list(sub._flatten_layers(include_self=False)):
                sub.trainable = False
    return adapters


def merge_adapters(layer: tf.keras.layers.Layer) -> int:
    """Folds every adapter under ``layer`` (a model, tower or encoder) into its Dense and puts the plain
    Dense back in its place: the layer is plain BERT again (an export holds no adapter variables).
    Returns how many adapters were merged."""
    merged = 0
    for sub in list(layer._flatten_layers(include_self=True, recursive=True)):
        for name in ("query", "key", "value"):
            adapter = getattr(sub, name, None)
            if isinstance(adapter, LoRADense):
                adapter.merge()
                setattr(sub, name, adapter.base)
                merged += 1
    return merged


@contextlib.contextmanager
def adapters_merged(layer: tf.keras.layers.Layer) -> Iterator[int]:
    """Inside, ``layer`` is plain BERT (:func:`merge_adapters`); after, its adapters and original kernels are
    back, so the caller's model is the one it had. Yields how many adapters were merged (0: none, nothing done)."""
    places = [(sub, name, getattr(sub, name)) for sub in list(layer._flatten_layers(include_self=True, recursive=True))
              for name in ("query", "key", "value") if isinstance(getattr(sub, name, None), LoRADense)]
    kernels = [adapter.base.kernel.numpy() for _, _, adapter in places]
    merged = merge_adapters(layer)
    try:
        yield merged
    finally:
        for (sub, name, adapter), kernel in zip(places, kernels):
            adapter.base.kernel.assign(kernel)
            adapter.merged = False
            setattr(sub, name, adapter)
