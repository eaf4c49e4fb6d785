"""Rated history: what the user's past labels (ratings) say about one candidate item.

The ranking head's view of a user's history. The query tower already pools the
history items into the query embedding (what the user watched); this layer adds
how the user *rated* them, read against the candidate (an item-based
neighbourhood model with learned similarity):

* ``candidate``: float32 [batch, d], the item tower's output for the candidate;
* ``items``: float32 [batch, length, d], the item tower's output for each history
  item, most recent first;
* ``labels``: float32 [batch, length], the user's label (rating) of each history
  item; NaN where unknown (a caller that sends no labels);
* ``mask``: bool [batch, length], True where a real history item sits.

Output float32 [batch, 9 + d]:

* the labels weighted by the candidate's attention over the rated items,
  ``softmax_j((W c) . h_j + p_j)`` (similar items' ratings);
* the labels weighted by position only, ``softmax_j(p'_j)`` (recent ratings);
* the plain mean label, the share of the ``length`` slots that hold a rated
  item, and the largest similarity ``c . h_j`` among them;
* a learned usual label per item, ``e(x) = w . x + b``: ``e(c)`` of the candidate,
  and the residuals ``r_j - e(h_j)`` pooled the three ways above (a user who
  rates well-liked items 5 is not a user who rates everything 5);
* the attention-weighted mean of the rated items' embeddings [d].

With no rated item every output is 0, so a request without labels still scores.
``label_dropout`` hides all labels of that share of training rows, so the head
also learns to score without them.
"""

from __future__ import annotations

import tensorflow as tf


def _masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis where ``mask``; an all-masked row gives zeros (not NaN)."""
    weights = tf.nn.softmax(tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9)), axis=-1)
    return weights * tf.cast(mask, weights.dtype)


class RatedHistory(tf.keras.layers.Layer):
    """(candidate [b, d], history items [b, L, d], labels [b, L], mask [b, L]) -> float32 [b, 9 + d].

    Args:
      max_length: the history length L (number of learned position biases).
      label_dropout: share of training rows whose labels are all hidden.
    """

    def __init__(self, max_length: int, label_dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.label_dropout = max_length, float(label_dropout)
        self.similarity_bias = self.add_weight(name="similarity_position_bias", shape=[max_length],
                                               initializer="zeros")
        self.recency_bias = self.add_weight(name="recency_position_bias", shape=[max_length], initializer="zeros")
        self.project = None

    def build(self, input_shape) -> None:
        dim = int(input_shape[-1])
        # Starts as 5 x cosine similarity (both sides are unit length): a soft nearest-neighbour weighting.
        self.project = tf.keras.layers.Dense(dim, use_bias=False, name="similarity",
                                             kernel_initializer=tf.keras.initializers.Identity(gain=5.0))
        self.project.build([None, dim])
        self.usual = tf.keras.layers.Dense(1, name="usual_label")
        self.usual.build([None, dim])
        super().build(input_shape)

    def call(self, candidate: tf.Tensor, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
             training: bool = False) -> tf.Tensor:
        # A longer history than the layer has positions for keeps its most recent max_length items.
        items = tf.cast(items[:, :self.max_length], tf.float32)
        labels, mask = tf.cast(labels[:, :self.max_length], tf.float32), mask[:, :self.max_length]
        candidate = tf.cast(candidate, tf.float32)
        rated = tf.logical_and(mask, tf.logical_not(tf.math.is_nan(labels)))
        if training and self.label_dropout > 0:
            keep = tf.random.uniform([tf.shape(labels)[0], 1]) >= self.label_dropout
            rated = tf.logical_and(rated, keep)
        labels = tf.where(rated, labels, tf.zeros_like(labels))
        length = tf.shape(items)[1]
        scores = tf.einsum("bd,bld->bl", self.project(candidate), items) + self.similarity_bias[None, :length]
        attention = _masked_softmax(scores, rated)  # [b, L]
        recency = _masked_softmax(tf.broadcast_to(self.recency_bias[None, :length], tf.shape(labels)), rated)
        count = tf.reduce_sum(tf.cast(rated, tf.float32), axis=1)  # [b]
        mean = tf.reduce_sum(labels, axis=1) / tf.maximum(count, 1.0)
        cosine = tf.einsum("bd,bld->bl", candidate, items)
        nearest = tf.reduce_max(tf.where(rated, cosine, tf.fill(tf.shape(cosine), -2.0)), axis=1)
        nearest = tf.where(count > 0, nearest, tf.zeros_like(nearest))
        usual_candidate = self.usual(candidate)[:, 0]
        residuals = tf.where(rated, labels - self.usual(items)[..., 0], tf.zeros_like(labels))
        scalars = tf.stack([tf.reduce_sum(attention * labels, axis=1), tf.reduce_sum(recency * labels, axis=1),
                            mean, count / float(self.max_length), nearest, usual_candidate,
                            tf.reduce_sum(attention * residuals, axis=1), tf.reduce_sum(recency * residuals, axis=1),
                            tf.reduce_sum(residuals, axis=1) / tf.maximum(count, 1.0)], axis=1)
        return tf.concat([scalars, tf.einsum("bl,bld->bd", attention, items)], axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "max_length": self.max_length, "label_dropout": self.label_dropout}


tf.keras.utils.register_keras_serializable("tfrec")(RatedHistory)
