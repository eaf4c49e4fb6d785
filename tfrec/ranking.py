"""Ranking: a head that scores (query, item) pairs, its task, its evaluation and serving lookup.

Retrieval finds candidates with one dot product per item; the ranking head then
orders a short list of them using everything known about each pair:

* the query tower's output ``q`` and the item tower's output ``i`` (both unit
  length, float32 [batch, d]) and their element-wise product ``q * i``;
* optionally (``ranking.extra_features``) the item's categorical values through
  the head's own embeddings (``categorical``) and the retrieval score
  ``sum(q * i)`` (``retrieval_score``).

Head kinds: ``mlp`` (dense layers) and ``dcn`` (Deep & Cross Network: TFRS
``Cross`` layers, full rank or low rank with ``projection_dim``, then the same
dense layers). The head outputs a raw score per pair: the predicted rating
(``objective: regression``) or a logit (``objective: binary``); :meth:`RankingHead.score`
turns it into what a caller sees (rating or probability).

Evaluation (:func:`evaluate_ranking`, written to ``eval.json`` under ``"ranking"``):
RMSE and MAE (regression) or AUC and log-loss (binary) of the test pairs, with
label baselines from the training split, and re-ranking quality: NDCG@10 of
the retrieval top 100 ordered by the ranking head versus by retrieval score.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec.encoders.ids import IdEmbedding

log = logging.getLogger("tfrec")

HEAD_KINDS = ("mlp", "dcn")
OBJECTIVES = ("regression", "binary")
EXTRA_FEATURES = ("categorical", "retrieval_score")


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
    """

    def __init__(self, kind: str = "mlp", hidden_units: list[int] = (128, 64), objective: str = "regression",
                 cross_layers: int = 2, projection_dim: int | None = None,
                 categorical_vocabularies: dict[str, list[str]] | None = None, categorical_embedding_dim: int = 8,
                 use_retrieval_score: bool = False, **kwargs):
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
                 item_features: dict | None = None) -> tf.Tensor:
        """The head's input x0: float32 [batch, 3d (+ columns * embedding dim) (+ 1)]."""
        q = tf.cast(query_embeddings, tf.float32)
        i = tf.cast(item_embeddings, tf.float32)
        parts = [q, i, q * i]
        for col, layer in self.categorical.items():
            parts.append(layer((item_features or {})[f"item_{col}"]))
        if self.use_retrieval_score:
            parts.append(tf.reduce_sum(q * i, axis=-1, keepdims=True))
        return tf.concat(parts, axis=-1)

    def call(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor, item_features: dict | None = None,
             training: bool = False) -> tf.Tensor:
        """Raw scores float32 [batch] (rating, or logit for ``binary``).

        Args:
          query_embeddings: float32 [batch, d], the query tower's output.
          item_embeddings: float32 [batch, d], the item tower's output.
          item_features: ``item_<column>`` string [batch] per categorical column
            (only read when the head has categorical inputs).
        """
        x0 = self.features(query_embeddings, item_embeddings, item_features)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.dense:
            x = layer(x)
        return tf.squeeze(tf.cast(self.out(x), tf.float32), axis=-1)

    def score(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor,
              item_features: dict | None = None) -> tf.Tensor:
        """What callers see, float32 [batch]: the predicted rating, or the probability (binary)."""
        raw = self(query_embeddings, item_embeddings, item_features, training=False)
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
                "use_retrieval_score": self.use_retrieval_score}


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


# ----------------------------------------------------------------- serving
class CatalogLookup(tf.Module):
    """Item id -> the item's embedding and categorical values, inside a SavedModel.

    The ranking head needs the item tower's output for ids a caller names; the
    catalog's embeddings are computed once at export and looked up by id here.

    Args:
      item_ids: [num_items] unique ids.
      item_embeddings: float32 [num_items, d] from the trained item tower.
      categorical: column -> [num_items] values (the head's categorical inputs).
    """

    def __init__(self, item_ids: list[str], item_embeddings: np.ndarray, categorical: dict[str, list[str]],
                 name: str = "catalog_lookup"):
        super().__init__(name=name)
        ids = tf.constant([str(i) for i in item_ids], tf.string)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(ids, tf.range(len(item_ids), dtype=tf.int64)), default_value=-1)
        # Variables, not constants: they go to the variables/ checkpoint, not the graph proto.
        self.embeddings = tf.Variable(np.asarray(item_embeddings, np.float32), trainable=False, name="embeddings")
        self.columns = list(categorical)
        self.values = [tf.Variable(np.array([str(v) for v in categorical[c]], dtype=object), dtype=tf.string,
                                   trainable=False, name=f"item_{c}") for c in self.columns]

    def lookup(self, item_ids: tf.Tensor) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """string [n] -> (float32 [n, d] embeddings, {item_<col>: string [n]}, bool [n] known)."""
        rows = self.table.lookup(item_ids)
        known = rows >= 0
        safe = tf.where(known, rows, tf.zeros_like(rows))
        features = {f"item_{c}": tf.gather(v, safe) for c, v in zip(self.columns, self.values)}
        return tf.gather(self.embeddings, safe), features, known


def rank_candidates(head: RankingHead, catalog: CatalogLookup, query_embeddings: tf.Tensor,
                    item_ids: tf.Tensor) -> tf.Tensor:
    """Ranking scores float32 [batch, c] of ``item_ids`` string [batch, c] for each query [batch, d].

    Ids not in the catalog (and ``""`` padding) score ``-inf``, so they sort last.
    """
    shape = tf.shape(item_ids)
    flat = tf.reshape(item_ids, [-1])
    items, features, known = catalog.lookup(flat)
    queries = tf.repeat(tf.cast(query_embeddings, tf.float32), shape[1], axis=0)  # [batch * c, d]
    scores = head.score(queries, items, features)
    scores = tf.where(known, scores, tf.fill(tf.shape(scores), float("-inf")))
    return tf.reshape(scores, shape)


def rerank(ranking_scores: tf.Tensor, *others: tf.Tensor) -> list[tf.Tensor]:
    """Sorts each row by ``ranking_scores`` [batch, c] (best first); applies the same order to ``others``."""
    order = tf.argsort(ranking_scores, axis=-1, direction="DESCENDING", stable=True)
    return [tf.gather(t, order, batch_dims=1) for t in (ranking_scores, *others)]


# --------------------------------------------------------------- evaluation
def score_pairs(head: RankingHead, query_embeddings: np.ndarray, item_embeddings: np.ndarray,
                item_features: dict | None = None, batch_size: int = 8192) -> np.ndarray:
    """:meth:`RankingHead.score` over aligned rows, in batches: float32 [n].

    Args:
      query_embeddings, item_embeddings: float32 [n, d], row j is one pair.
      item_features: ``item_<column>`` -> [n] strings (object arrays).
    """
    fn = tf.function(head.score, reduce_retracing=True)
    out = []
    for start in range(0, len(query_embeddings), batch_size):
        end = start + batch_size
        feats = {k: tf.constant(np.asarray(v[start:end]).astype(str)) for k, v in (item_features or {}).items()}
        out.append(fn(tf.constant(query_embeddings[start:end], tf.float32),
                      tf.constant(item_embeddings[start:end], tf.float32), feats).numpy())
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """``rmse`` = sqrt(mean((y - p)^2)), ``mae`` = mean(|y - p|)."""
    err = np.asarray(predictions, np.float64) - np.asarray(labels, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC: the chance a random positive outscores a random negative (ties count 1/2).

    Mann-Whitney: (sum of the positives' ranks - P(P+1)/2) / (P N), with tied
    scores given their average rank. NaN when either class is absent.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, np.float64)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over runs of equal scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> dict[str, float]:
    """``auc`` (see :func:`auc`) and ``logloss`` = mean(-y log p - (1 - y) log(1 - p)), p clipped to [eps, 1-eps]."""
    y = (np.asarray(labels) > 0.5).astype(np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1.0 - eps)
    return {"auc": auc(y, p), "logloss": float(np.mean(-y * np.log(p) - (1.0 - y) * np.log(1.0 - p)))}


def label_baselines(train_items: list[str], train_targets: np.ndarray, test_items: list[str],
                    test_targets: np.ndarray, objective: str) -> dict[str, dict[str, float]]:
    """Predictions that ignore the query, scored like the model.

    ``regression``: ``global_mean`` (the training mean for every pair) and
    ``item_mean`` (each item's training mean; the global mean for items with
    no training label). ``binary``: ``global_rate`` and ``item_ctr`` (the
    item's share of positives in training), the same way.

    Args:
      train_targets, test_targets: float [n], the task's targets (ratings, or 0/1).
    """
    train_targets = np.asarray(train_targets, np.float64)
    overall = float(train_targets.mean())
    sums, counts = defaultdict(float), defaultdict(int)
    for item, y in zip(train_items, train_targets):
        sums[item] += y
        counts[item] += 1
    per_item = np.array([sums[i] / counts[i] if counts.get(i) else overall for i in test_items])
    constant = np.full(len(test_items), overall)
    score = regression_metrics if objective == "regression" else binary_metrics
    names = ("global_mean", "item_mean") if objective == "regression" else ("global_rate", "item_ctr")
    return {names[0]: score(test_targets, constant), names[1]: score(test_targets, per_item)}


def reranking_ndcg(head: RankingHead, query_embeddings: np.ndarray, item_embeddings: np.ndarray,
                   targets: np.ndarray, catalog_features: dict | None = None, candidates: int = 100, k: int = 10,
                   exclude: list[np.ndarray] | None = None, batch_size: int = 256) -> dict[str, float]:
    """NDCG@k of each query's target within its retrieval top ``candidates``, in two orders.

    For each query the ``candidates`` items with the highest retrieval score
    ``q . i`` are taken; queries whose target is not among them are left out
    (re-ranking cannot move an item it never sees). The target's rank r in the
    list ordered by retrieval score and in the list ordered by the ranking head
    gives NDCG@k = 1/log2(r + 1) if r <= k else 0 (one relevant item, so the
    ideal DCG is 1). Ties rank against the target, as in :mod:`tfrec.evaluate`.

    Args:
      query_embeddings: float32 [num_queries, d].
      item_embeddings: float32 [num_items, d].
      targets: int [num_queries], the target's catalog row.
      catalog_features: ``item_<column>`` -> [num_items] strings for the head.
      exclude: per query, catalog rows to leave out of retrieval (never the target).
    Returns:
      ``queries`` (how many had their target in the top ``candidates``),
      ``share`` (that count / all queries), ``ndcg@k_retrieval``,
      ``ndcg@k_reranked``, ``recall@k_retrieval``, ``recall@k_reranked``
      (means over those queries).
    """
    items = tf.constant(item_embeddings, tf.float32)
    n_items, dim = item_embeddings.shape
    c = min(candidates, n_items)
    retrieval_ranks, ranking_ranks = [], []
    for start in range(0, len(targets), batch_size):
        t = targets[start:start + batch_size]
        scores = tf.matmul(tf.constant(query_embeddings[start:start + batch_size], tf.float32), items,
                           transpose_b=True).numpy()
        if exclude is not None:
            for r, skip in enumerate(exclude[start:start + batch_size]):
                scores[r, skip[skip != t[r]]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :c]  # [b, c] catalog rows
        found = (top == t[:, None]).any(axis=1)
        if not found.any():
            continue
        top, t, q = top[found], t[found], query_embeddings[start:start + batch_size][found]
        rows = np.arange(len(t))
        cand_retrieval = scores[found][rows[:, None], top]  # [f, c]
        target_retrieval = scores[found][rows, t]
        retrieval_ranks.append((cand_retrieval >= target_retrieval[:, None]).sum(axis=1))
        flat = top.reshape(-1)
        feats = {key: np.asarray(v, dtype=object)[flat] for key, v in (catalog_features or {}).items()}
        ranking = score_pairs(head, np.repeat(q, c, axis=0), item_embeddings[flat], feats).reshape(len(t), c)
        target_ranking = ranking[top == t[:, None]]  # [f]: each row holds the target once
        ranking_ranks.append((ranking >= target_ranking[:, None]).sum(axis=1))
    if not retrieval_ranks:
        return {"queries": 0, "share": 0.0}
    by = {"retrieval": np.concatenate(retrieval_ranks), "reranked": np.concatenate(ranking_ranks)}
    out = {"queries": int(len(by["retrieval"])), "share": float(len(by["retrieval"]) / max(len(targets), 1))}
    for name, ranks in by.items():
        out[f"ndcg@{k}_{name}"] = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))
    for name, ranks in by.items():
        out[f"recall@{k}_{name}"] = float(np.mean(ranks <= k))
    return out


def label_metrics(model, data, split: str, query_embeddings: np.ndarray, item_embeddings: np.ndarray) -> dict:
    """The ranking head's metrics on ``split``'s (query, item, label) pairs: ``rmse``/``mae`` or ``auc``/``logloss``.

    Args: as :func:`evaluate_ranking`. Cheap enough to run every epoch (``val_rmse`` ... in TensorBoard).
    """
    examples, catalog = getattr(data, split), data.catalog
    positions = np.array([catalog.position[i] for i in examples.item_id], dtype=np.int64)
    feats = {f"item_{c}": np.asarray(v, dtype=object)[positions] for c, v in catalog.categorical.items()}
    targets = model.ranking.targets(tf.constant(examples.label)).numpy()
    predictions = score_pairs(model.ranking_head, query_embeddings, item_embeddings[positions], feats)
    metrics = regression_metrics if model.ranking.objective == "regression" else binary_metrics
    return metrics(targets, predictions)


def evaluate_ranking(model, data, split: str, query_embeddings: np.ndarray, item_embeddings: np.ndarray,
                     exclude_seen: bool = False, candidates: int = 100, k: int = 10) -> dict:
    """The ``"ranking"`` section of ``eval.json`` for a model with a ranking head.

    Args:
      model: a :class:`tfrec.models.TwoTowerModel` with ``ranking_head`` and ``ranking``.
      data: :class:`tfrec.data.dataset.RetrievalData`.
      split: ``"test"`` (or ``"validation"``).
      query_embeddings: float32 [len(split), d], the split's query tower outputs.
      item_embeddings: float32 [num_items, d], the catalog's item tower outputs.
    Returns:
      ``{"objective", "model": {rmse, mae} | {auc, logloss}, "baselines": {...},
      "reranking": {...}}``.
    """
    head, task = model.ranking_head, model.ranking
    examples = getattr(data, split)
    catalog = data.catalog
    positions = np.array([catalog.position[i] for i in examples.item_id], dtype=np.int64)
    catalog_features = {f"item_{c}": np.asarray(v, dtype=object) for c, v in catalog.categorical.items()}
    targets = task.targets(tf.constant(examples.label)).numpy()
    train_targets = task.targets(tf.constant(data.train.label)).numpy()
    exclude = None
    if exclude_seen:
        seen = data.seen_items()
        exclude = [np.array([catalog.position[i] for i in seen.get(u, ())], dtype=np.int64)
                   for u in examples.user_id]
    report = {"objective": task.objective, "pairs": int(len(targets)),
              "model": label_metrics(model, data, split, query_embeddings, item_embeddings),
              "baselines": label_baselines(data.train.item_id, train_targets, examples.item_id, targets,
                                           task.objective),
              "reranking": reranking_ndcg(head, query_embeddings, item_embeddings, positions, catalog_features,
                                          candidates, k, exclude)}
    if task.objective == "binary":
        report["positive_threshold"] = task.positive_threshold
    return report


def format_report(report: dict) -> str:
    """A few lines for the log: the model's and the baselines' metrics, and re-ranking NDCG."""
    lines = [f"ranking ({report['objective']}, {report['pairs']} test pairs):"]
    for name, values in {"model": report["model"], **report["baselines"]}.items():
        lines.append(f"  {name:<12}" + "  ".join(f"{m}={v:.4f}" for m, v in values.items()))
    r = report["reranking"]
    if r.get("queries"):
        keys = [key for key in r if key.startswith("ndcg@")]
        lines.append(f"  re-ranking top candidates of {r['queries']} queries: "
                     + "  ".join(f"{key}={r[key]:.4f}" for key in keys))
    return "\n".join(lines)
