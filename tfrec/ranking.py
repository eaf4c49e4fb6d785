"""Ranking: a head that scores (query, item) pairs, and the task that trains it.

Retrieval finds candidates with one dot product per item; the ranking head then
orders a short list of them using everything known about each pair:

* the query tower's output ``q`` and the item tower's output ``i`` (both unit
  length, float32 [batch, d]) and their element-wise product ``q * i``;
* optionally (``ranking.extra_features``) the item's categorical values through
  the head's own embeddings (``categorical``), the retrieval score
  ``sum(q * i)`` (``retrieval_score``), and the user's labels of the history
  items read against the candidate (``rated_history``,
  :class:`tfrec.encoders.rated_history.RatedHistory`; needs a history query).

When the query tower reads the history as items, ``q`` already holds what the
user had; ``rated_history`` adds how they rated it, the strongest single signal
for the next rating (the item's and the user's usual level).

Head kinds: ``mlp`` (dense layers) and ``dcn`` (Deep & Cross Network: TFRS
``Cross`` layers, full rank or low rank with ``projection_dim``, then the same
dense layers). The head outputs a raw score per pair: the predicted rating
(``objective: regression``) or a logit (``objective: binary``); :meth:`RankingHead.score`
turns it into what a caller sees (rating or probability).

Its evaluation is :mod:`tfrec.ranking_eval`; the id lookup that serves it inside
a SavedModel is :mod:`tfrec.export.catalog_lookup`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec.encoders.ids import IdEmbedding
from tfrec.encoders.rated_history import RatedHistory

HEAD_KINDS = ("mlp", "dcn")
OBJECTIVES = ("regression", "binary")


# --------------------------------------------------------------------- head
class RankingHead(tf.keras.layers.Layer):
    """(query [batch, d], item [batch, d], item features) -> raw score float32 [batch].

    Args:
      kind: ``mlp`` or ``dcn``.
      hidden_units: widths of the dense layers (ReLU) before the 1-unit output.
      objective: ``regression`` (raw score = predicted label) or ``binary``
        (raw score = logit; :meth:`score` applies the sigmoid).
      cross_layers: number of ``Cross`` layers (``dcn`` only).
      projection_dim: low-rank width of each ``Cross`` kernel, or None for full rank.
      categorical_vocabularies: column -> known values; each gets an embedding
        looked up from ``item_<column>`` (empty: no categorical input).
      categorical_embedding_dim: width of those embeddings.
      use_retrieval_score: also feed ``sum(q * i)`` [batch, 1].
      rated_history_length: > 0 also feeds :class:`RatedHistory` over that many history items
        (the ``history`` argument of :meth:`call`); 0 leaves it out.
    """

    def __init__(self, kind: str = "mlp", hidden_units: list[int] = (128, 64), objective: str = "regression",
                 cross_layers: int = 2, projection_dim: int | None = None,
                 categorical_vocabularies: dict[str, list[str]] | None = None, categorical_embedding_dim: int = 8,
                 use_retrieval_score: bool = False, rated_history_length: int = 0, **kwargs):
        super().__init__(**kwargs)
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.kind, self.hidden_units, self.objective = kind, list(hidden_units), objective
        self.cross_layers, self.projection_dim = cross_layers, projection_dim
        self.categorical_vocabularies = {k: list(v) for k, v in (categorical_vocabularies or {}).items()}
        self.categorical_embedding_dim = categorical_embedding_dim
        self.use_retrieval_score = use_retrieval_score
        self.rated_history_length = int(rated_history_length)
        self.rated_history = RatedHistory(self.rated_history_length, name="rated_history") \
            if self.rated_history_length else None
        self.categorical = {col: IdEmbedding(vocab, categorical_embedding_dim, name=f"ranking_item_{col}")
                            for col, vocab in self.categorical_vocabularies.items()}
        # DCN's cross stack: x_{l+1} = x0 * (W x_l + b) + x_l, with W = U V when low rank.
        self.cross = [tfrs.layers.dcn.Cross(projection_dim=projection_dim, kernel_initializer="glorot_uniform",
                                            name=f"cross_{n}")
                      for n in range(cross_layers if kind == "dcn" else 0)]
        self.dense = [tf.keras.layers.Dense(units, activation="relu", name=f"dense_{n}")
                      for n, units in enumerate(self.hidden_units)]
        # float32 output under mixed precision: a rating or logit needs the range and the precision.
        self.out = tf.keras.layers.Dense(1, dtype="float32", name="score")

    def features(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor,
                 item_features: dict | None = None, history: dict | None = None,
                 training: bool = False) -> tf.Tensor:
        """The head's input x0: float32 [batch, 3d (+ columns * embedding dim) (+ 1) (+ 9 + d)]."""
        q = tf.cast(query_embeddings, tf.float32)
        i = tf.cast(item_embeddings, tf.float32)
        parts = [q, i, q * i]
        for col, layer in self.categorical.items():
            parts.append(layer((item_features or {})[f"item_{col}"]))
        if self.use_retrieval_score:
            parts.append(tf.reduce_sum(q * i, axis=-1, keepdims=True))
        if self.rated_history is not None:
            if history is None:  # no history given: the "nothing rated" input, zeros
                history = empty_history(tf.shape(i)[0], i.shape[-1])
            parts.append(self.rated_history(i, history["items"], history["labels"], history["mask"],
                                            training=training))
        return tf.concat(parts, axis=-1)

    def call(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor, item_features: dict | None = None,
             training: bool = False, history: dict | None = None) -> tf.Tensor:
        """Raw scores float32 [batch] (rating, or logit for ``binary``).

        Args:
          query_embeddings: float32 [batch, d], the query tower's output.
          item_embeddings: float32 [batch, d], the item tower's output.
          item_features: ``item_<column>`` string [batch] per categorical column
            (only read when the head has categorical inputs).
          history: with ``rated_history``: ``items`` float32 [batch, L, d] (the item tower's output
            per history item), ``labels`` float32 [batch, L] (NaN = unknown), ``mask`` bool [batch, L].
        """
        x0 = self.features(query_embeddings, item_embeddings, item_features, history, training)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.dense:
            x = layer(x)
        return tf.squeeze(tf.cast(self.out(x), tf.float32), axis=-1)

    def score(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor,
              item_features: dict | None = None, history: dict | None = None) -> tf.Tensor:
        """What callers see, float32 [batch]: the predicted rating, or the probability (binary)."""
        raw = self(query_embeddings, item_embeddings, item_features, training=False, history=history)
        return tf.sigmoid(raw) if self.objective == "binary" else raw

    def build_variables(self, dim: int) -> None:
        """Creates every variable now (so a checkpoint restores into them before training)."""
        features = {f"item_{col}": tf.constant([""]) for col in self.categorical}
        self(tf.zeros([1, dim]), tf.zeros([1, dim]), features)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "hidden_units": self.hidden_units,
                "objective": self.objective, "cross_layers": self.cross_layers,
                "projection_dim": self.projection_dim, "categorical_vocabularies": self.categorical_vocabularies,
                "categorical_embedding_dim": self.categorical_embedding_dim,
                "use_retrieval_score": self.use_retrieval_score,
                "rated_history_length": self.rated_history_length}


def empty_history(batch, dim: int, length: int = 1) -> dict:
    """A head ``history`` with nothing in it: [batch, length, dim] zeros, all masked."""
    return {"items": tf.zeros([batch, length, dim]), "labels": tf.zeros([batch, length]),
            "mask": tf.zeros([batch, length], tf.bool)}


# --------------------------------------------------------------------- task
class RankingTask(tf.keras.layers.Layer):
    """Pointwise ranking loss and metrics on ``tfrs.tasks.Ranking``.

    ``regression``: mean squared error between the head's output and the label
    (e.g. a 1-5 rating); metrics ``ranking_rmse``, ``ranking_mae``.
    ``binary``: sigmoid cross-entropy of the head's logit against
    ``label >= positive_threshold``; metrics ``ranking_auc``, ``ranking_logloss``.
    Both also track ``ranking_loss`` (mean per-example loss). The metrics are
    Keras metrics tracked by the model, so they are reset each epoch and land in
    the training logs and TensorBoard beside the retrieval ones.

    Args:
      objective: ``regression`` or ``binary``.
      positive_threshold: ``binary`` only: labels at or above it are positives.
    """

    def __init__(self, objective: str = "regression", positive_threshold: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective, self.positive_threshold = objective, float(positive_threshold)
        # Per-example losses (Reduction.NONE): the mean is taken over the *global*
        # batch below, so N replicas at batch B equal one replica at batch N*B.
        none = tf.keras.losses.Reduction.NONE
        if objective == "regression":
            loss = tf.keras.losses.MeanSquaredError(reduction=none)
            metrics = [tf.keras.metrics.RootMeanSquaredError(name="ranking_rmse"),
                       tf.keras.metrics.MeanAbsoluteError(name="ranking_mae")]
        else:
            loss = tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=none)
            metrics = [tf.keras.metrics.AUC(from_logits=True, name="ranking_auc"),
                       tf.keras.metrics.BinaryCrossentropy(from_logits=True, name="ranking_logloss")]
        self.task = tfrs.tasks.Ranking(loss=loss, metrics=metrics,
                                       loss_metrics=[tf.keras.metrics.Mean(name="ranking_loss")])

    def targets(self, labels: tf.Tensor) -> tf.Tensor:
        """float32 [batch]: the label itself, or 1.0 / 0.0 against ``positive_threshold``."""
        labels = tf.cast(labels, tf.float32)
        if self.objective == "binary":
            return tf.cast(labels >= self.positive_threshold, tf.float32)
        return labels

    def call(self, labels: tf.Tensor, scores: tf.Tensor, sample_weight: tf.Tensor | None = None,
             compute_metrics: bool = True) -> tf.Tensor:
        """Returns the scalar loss (mean over the global batch).

        Args:
          labels: float32 [batch], the raw label column (ratings, clicks).
          scores: float32 [batch], the head's raw output (rating or logit).
          sample_weight: float32 [batch] or None.
        """
        # [batch, 1]: Keras losses average over the last axis, which must be the
        # (single) output, not the batch.
        y = self.targets(labels)[:, None]
        per_example = self.task(y, tf.cast(scores, tf.float32)[:, None], sample_weight=sample_weight,
                                compute_metrics=compute_metrics)
        return tf.nn.compute_average_loss(per_example)

    def get_config(self) -> dict:
        return {**super().get_config(), "objective": self.objective, "positive_threshold": self.positive_threshold}


for _cls in (RankingHead, RankingTask):
    tf.keras.utils.register_keras_serializable("tfrec")(_cls)
