"""History encoders: a user's recent items (already embedded) -> one vector.

Every encoder takes

* ``items``: float32 [batch, length, dim], the item tower's embedding of each
  history item, **most recent first**;
* ``mask``: bool [batch, length], True where a real item sits (padding is
  False and always at the tail),

and returns float32 [batch, dim]. An empty history gives a finite vector (zeros
for ``mean``), never NaN. ``make_history_encoder(name, ...)`` builds one by its
config name (``model.history_encoder``).
"""

from __future__ import annotations

import tensorflow as tf

NAMES = ("mean", "attention", "gru", "transformer")


def _masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis where ``mask``; all-masked rows give zeros (not NaN)."""
    scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
    weights = tf.nn.softmax(scores, axis=-1)
    return weights * tf.cast(mask, weights.dtype)


class MeanHistory(tf.keras.layers.Layer):
    """The mean of the real history items: [batch, length, dim] -> [batch, dim]."""

    def call(self, items: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        m = tf.cast(mask, items.dtype)[..., None]
        return tf.reduce_sum(items * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


class AttentionHistory(tf.keras.layers.Layer):
    """Attention pooling: weights = softmax(w . tanh(W x_i) + b_position(i)) over real items.

    The per-position bias lets it learn how much recency matters.

    Args:
      max_length: the history length (number of learned position biases).
      hidden: width of the scoring layer.
    """

    def __init__(self, max_length: int, hidden: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.hidden = max_length, hidden
        self.score_hidden = tf.keras.layers.Dense(hidden, activation="tanh")
        self.score = tf.keras.layers.Dense(1, use_bias=False)
        self.position_bias = self.add_weight(name="position_bias", shape=[max_length], initializer="zeros")

    def call(self, items: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        length = tf.shape(items)[1]
        scores = tf.squeeze(self.score(self.score_hidden(items)), -1) + self.position_bias[None, :length]
        weights = _masked_softmax(scores, mask)  # [batch, length]
        return tf.einsum("bl,bld->bd", weights, items)

    def get_config(self) -> dict:
        return {**super().get_config(), "max_length": self.max_length, "hidden": self.hidden}


class GruHistory(tf.keras.layers.Layer):
    """A GRU read oldest to most recent (GRU4Rec-style); the last state is the output.

    Args:
      units: the state width (the output dim).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.gru = tf.keras.layers.GRU(units)

    def call(self, items: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        # Oldest first, so the most recent item is read last; padding then leads and the mask skips it.
        state = self.gru(tf.reverse(items, [1]), mask=tf.reverse(mask, [1]))
        any_item = tf.reduce_any(mask, axis=1, keepdims=True)
        return tf.where(any_item, state, tf.zeros_like(state))

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


class TransformerHistory(tf.keras.layers.Layer):
    """Causal self-attention with learned positions (SASRec-style), read at the most recent item.

    Position 0 is the most recent item; position i attends only to itself and
    older items (j >= i), as in SASRec, so every position is a valid "next item"
    query. Pre-norm blocks: x += MHA(LN(x)); x += FFN(LN(x)); the output is the
    final LayerNorm at position 0.

    Args:
      max_length: the history length (number of learned positions).
      dim: the model width (= the item embedding width).
      num_layers, num_heads: transformer size.
      dropout: on embeddings, attention and feed-forward outputs.
    """

    def __init__(self, max_length: int, dim: int, num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.dim, self.num_layers = max_length, dim, num_layers
        self.num_heads, self.dropout = num_heads, dropout
        self.positions = tf.keras.layers.Embedding(max_length, dim, name="positions")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = []
        for i in range(num_layers):
            self.blocks.append({
                "norm1": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm1_{i}"),
                "attention": tf.keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout,
                                                                name=f"attention_{i}"),
                "norm2": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm2_{i}"),
                "ffn": tf.keras.Sequential([tf.keras.layers.Dense(dim, activation="gelu"),
                                            tf.keras.layers.Dropout(dropout), tf.keras.layers.Dense(dim),
                                            tf.keras.layers.Dropout(dropout)], name=f"ffn_{i}"),
            })
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm")

    def call(self, items: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        length = tf.shape(items)[1]
        # Unit-length item vectors are scaled up so they are not drowned by the positions (SASRec's sqrt(d)).
        x = items * (self.dim ** 0.5) + self.positions(tf.range(length))[None]
        x = self.input_dropout(x, training=training) * tf.cast(mask, x.dtype)[..., None]
        # attend[b, i, j]: query i may read key j when j is real and not more recent than i (j >= i).
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), 0, -1)
        attend = tf.logical_and(causal[None], mask[:, None, :])
        # A padded query row with nothing to read would softmax over nothing: let it read itself.
        attend = tf.logical_or(attend, tf.eye(length, dtype=tf.bool)[None])
        for block in self.blocks:
            h = block["norm1"](x)
            x += block["attention"](h, h, attention_mask=attend, training=training)
            x += block["ffn"](block["norm2"](x), training=training)
        out = self.output_norm(x[:, 0])
        any_item = tf.reduce_any(mask, axis=1, keepdims=True)
        return tf.where(any_item, out, tf.zeros_like(out))

    def get_config(self) -> dict:
        return {**super().get_config(), "max_length": self.max_length, "dim": self.dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "dropout": self.dropout}


def make_history_encoder(name: str, max_length: int, dim: int, dropout: float = 0.2) -> tf.keras.layers.Layer:
    """The encoder called ``name`` (one of :data:`NAMES`) for histories [batch, max_length, dim]."""
    if name == "mean":
        return MeanHistory(name="history_encoder")
    if name == "attention":
        return AttentionHistory(max_length, name="history_encoder")
    if name == "gru":
        return GruHistory(dim, name="history_encoder")
    if name == "transformer":
        return TransformerHistory(max_length, dim, dropout=dropout, name="history_encoder")
    raise ValueError(f"model.history_encoder: unknown encoder '{name}'; expected one of {', '.join(NAMES)}")


for _cls in (MeanHistory, AttentionHistory, GruHistory, TransformerHistory):
    tf.keras.utils.register_keras_serializable("tfrec")(_cls)
