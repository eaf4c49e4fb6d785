"""Id and categorical embeddings: string lookup with one out-of-vocabulary bucket."""

from __future__ import annotations

import tensorflow as tf


class IdEmbedding(tf.keras.layers.Layer):
    """Strings [batch] -> float32 [batch, dim]; unknown strings share one OOV row.

    Args:
      vocabulary: the known values (e.g. every item id of the catalog).
      dim: embedding width.
    """

    def __init__(self, vocabulary: list[str], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary, self.dim = list(vocabulary), dim
        self.lookup = tf.keras.layers.StringLookup(vocabulary=self.vocabulary, num_oov_indices=1, mask_token=None)
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + 1, dim)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(tf.reshape(values, [-1])))

    def get_config(self) -> dict:
        return {**super().get_config(), "vocabulary": self.vocabulary, "dim": self.dim}


tf.keras.utils.register_keras_serializable("tfrec")(IdEmbedding)
