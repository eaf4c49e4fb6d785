"""The towers' text skip: a trained model that starts where its pretrained text encoder is.

With ``model.text_skip`` on, each tower's output is

    l2_normalize(gate * l2_normalize(head(features)) + l2_normalize(t) @ P)

where ``t`` float32 [batch, hidden] is the encoder's pooled output of the
query (or item) text, ``P`` float32 [hidden, embedding_dim] a fixed projection
and ``gate`` a trainable scalar that starts at 0 (:class:`TextSkip`), so the
head, with the id, categorical and history features it reads, starts with no
say and training adds it. Before training, a query scores an item
``(t_q P) . (t_i P)`` up to a per-query factor, which ranks the catalog by
``t_q . t_i``, the ``content`` baseline's cosine, when the item directions lie
in the span of ``P``'s columns:

* ``embedding_dim >= hidden``: ``P`` is the identity (padded with zero columns);
* ``embedding_dim < hidden``: ``P``'s columns are the top principal directions
  (uncentred) of the catalog's unit-length text encodings (:func:`principal_directions`),
  exact when the catalog has at most ``embedding_dim`` distinct texts and the
  closest ``embedding_dim``-dimensional fit of their dot products otherwise.

``P`` stays fixed: trained at the heads' learning rate it drifted from the
encoder within the first epoch and lost to the fixed one on the smoke log
with MiniLM, as did a head whose last layer starts at zero instead of the gate.

:func:`tfrec.run.train` sets ``P`` from the catalog (:func:`start_from_encoder`) and scores
this starting point on validation as epoch 0, which the best checkpoint keeps unless an
epoch beats it.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfrec")


class TextSkip(tf.keras.layers.Layer):
    """(text [batch, hidden], head [batch, embedding_dim]) -> float32 [batch, embedding_dim]:
    ``gate * l2_normalize(head) + l2_normalize(text) @ P`` (not normalised: the tower does that).

    ``P`` (``projection``, float32 [hidden, embedding_dim], not trained) starts as the identity
    (``tf.eye``, zero columns or rows where the two widths differ), ``gate`` (trainable) at 0.
    Computed in float32 under every precision policy. An all-zero text row (a history query's
    empty text) adds nothing.

    Args:
      hidden_size: the encoder's output width.
      embedding_dim: the tower's output width.
    """

    def __init__(self, hidden_size: int, embedding_dim: int, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.hidden_size, self.embedding_dim = hidden_size, embedding_dim
        self.projection = self.add_weight(name="projection", shape=[hidden_size, embedding_dim],
                                          initializer=tf.keras.initializers.Identity(), trainable=False)
        self.gate = self.add_weight(name="gate", shape=[], initializer="zeros", trainable=True)

    def call(self, text: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
        skip = tf.matmul(tf.math.l2_normalize(tf.cast(text, tf.float32), axis=-1), self.projection)
        return self.gate * tf.math.l2_normalize(tf.cast(head, tf.float32), axis=-1) + skip

    def get_config(self) -> dict:
        config = {**super().get_config(), "hidden_size": self.hidden_size, "embedding_dim": self.embedding_dim}
        config.pop("dtype", None)  # always float32
        return config


tf.keras.utils.register_keras_serializable("tfrec")(TextSkip)


def principal_directions(encodings: np.ndarray, embedding_dim: int) -> tuple[np.ndarray, float]:
    """The starting ``P`` float32 [hidden, embedding_dim] for encodings float32 [num_items, hidden], and the
    share of the unit-length rows' squared length it keeps (1.0: every row lies in its span).

    The identity when ``embedding_dim >= hidden``; else the top ``embedding_dim`` eigenvectors of
    the rows' second-moment matrix (not centred: what is kept is their dot products), i.e. their
    top right singular vectors: orthonormal columns, so ``(u P) . (v P) = u . v`` for every ``v``
    in their span. Memory [hidden, hidden] plus one chunk of rows, whatever the catalog size.
    """
    hidden = encodings.shape[1]
    if embedding_dim >= hidden:
        return np.eye(hidden, embedding_dim, dtype=np.float32), 1.0
    moments = np.zeros([hidden, hidden])
    for start in range(0, len(encodings), 65_536):
        rows = np.asarray(encodings[start:start + 65_536], np.float64)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        moments += rows.T @ rows
    values, vectors = np.linalg.eigh(moments)  # ascending
    top = np.argsort(-values, kind="stable")[:embedding_dim]
    kept = float(values[top].sum() / max(values.sum(), 1e-12))
    return vectors[:, top].astype(np.float32), kept


def starts_at_encoder(model) -> bool:
    """Whether ``model`` (a :class:`tfrec.models.TwoTowerModel`) has the text skip in its towers."""
    return model.item_tower.skip is not None


def start_recoverable(model) -> bool:
    """Whether ``model``'s untrained start can be had back by closing both gates: the text skip is on and every
    text encoder is frozen (so the encoder's outputs and ``P`` are what they were before training)."""
    encoders = (model.query_tower.encoder, model.item_tower.text_encoder)
    return starts_at_encoder(model) and all(e is None or e.frozen for e in encoders)


def _skips(model) -> list[TextSkip]:
    return [s for s in (model.query_tower.skip, model.item_tower.skip) if s is not None]


def close_gates(model) -> None:
    """Sets both towers' gates to 0: with frozen encoders the towers then rank as before training (the start)."""
    for skip in _skips(model):
        skip.gate.assign(0.0)


@contextlib.contextmanager
def at_start(model):
    """Within the block both towers' gates are 0 (:func:`close_gates`); their trained values come back after it."""
    saved = [float(skip.gate.numpy()) for skip in _skips(model)]
    close_gates(model)
    try:
        yield model
    finally:
        for skip, value in zip(_skips(model), saved):
            skip.gate.assign(value)


def start_from_encoder(model, catalog_texts: list[str], item_cache=None) -> None:
    """Sets both towers' ``P`` from the catalog's text encodings (:func:`principal_directions`).

    Args:
      model: a built :class:`tfrec.models.TwoTowerModel` with the text skip (its variables made).
      catalog_texts: [num_items] the item texts in catalog order.
      item_cache: the frozen item encoder's outputs (:class:`tfrec.data.pipeline.TextCache`), or None
        (the item tower's encoder encodes the texts).
    """
    skips = [s for s in (model.query_tower.skip, model.item_tower.skip) if s is not None]
    if not skips:
        return
    hidden, dim = skips[0].hidden_size, skips[0].embedding_dim
    if dim >= hidden:  # the identity it was built with
        log.info("text skip: the towers start as the encoder's cosine (model.embedding_dim %d >= its width %d)",
                 dim, hidden)
        return
    encoder = model.item_tower.text_encoder
    encodings = item_cache.lookup(catalog_texts) if item_cache is not None else encoder.encode_texts(catalog_texts)
    start, kept = principal_directions(np.asarray(encodings, np.float32), dim)
    for skip in skips:
        skip.projection.assign(start)
    log.info("text skip: the towers start near the encoder's cosine: the top %d of its %d directions hold %.1f%% "
             "of the item texts' encodings (set model.embedding_dim to %d for an exact start)", dim, hidden,
             100 * kept, hidden)
