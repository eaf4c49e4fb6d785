"""Evaluation of the ranking head (written to ``eval.json`` under ``"ranking"``).

RMSE and MAE (regression) or AUC and log-loss (binary) of the test pairs, with
label baselines from the training split, and re-ranking quality: NDCG@10 of
the retrieval top 100 ordered by the ranking head versus by retrieval score.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import tensorflow as tf

from tfrec.ranking import RankingHead


def score_pairs(head: RankingHead, query_embeddings: np.ndarray, item_embeddings: np.ndarray,
                item_features: dict | None = None, batch_size: int = 8192, history: dict | None = None,
                catalog_embeddings: np.ndarray | None = None) -> np.ndarray:
    """:meth:`RankingHead.score` over aligned rows, in batches: float32 [n].

    Args:
      query_embeddings, item_embeddings: float32 [n, d], row j is one pair.
      item_features: ``item_<column>`` -> [n] strings (object arrays).
      history: for a head with ``rated_history``: ``rows`` int [n, L] (catalog rows, -1 = padding) and
        ``labels`` float32 [n, L]; their embeddings are gathered from ``catalog_embeddings`` [num_items, d].
    """
    fn = tf.function(head.score, reduce_retracing=True)
    use_history = history is not None and getattr(head, "rated_history", None) is not None
    out = []
    for start in range(0, len(query_embeddings), batch_size):
        end = start + batch_size
        feats = {k: tf.constant(np.asarray(v[start:end]).astype(str)) for k, v in (item_features or {}).items()}
        args = [tf.constant(query_embeddings[start:end], tf.float32),
                tf.constant(item_embeddings[start:end], tf.float32), feats]
        if use_history:
            rows = history["rows"][start:end]
            args.append({"items": tf.constant(catalog_embeddings[np.maximum(rows, 0)], tf.float32),
                         "labels": tf.constant(history["labels"][start:end], tf.float32),
                         "mask": tf.constant(rows >= 0)})
        out.append(fn(*args).numpy())
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def split_history(examples) -> dict | None:
    """``{"rows": int64 [n, L], "labels": float32 [n, L]}`` of a split's histories, or None without them."""
    if examples.history is None or examples.history_label is None:
        return None
    return {"rows": examples.history, "labels": examples.history_label}


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
                   exclude: list[np.ndarray] | None = None, batch_size: int = 256,
                   history: dict | None = None) -> dict[str, float]:
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
      history: per query ``rows`` / ``labels`` [num_queries, L] for a head with ``rated_history``.
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
        hist = None if history is None else {
            key: np.repeat(v[start:start + batch_size][found], c, axis=0) for key, v in history.items()}
        rows = np.arange(len(t))
        cand_retrieval = scores[found][rows[:, None], top]  # [f, c]
        target_retrieval = scores[found][rows, t]
        retrieval_ranks.append((cand_retrieval >= target_retrieval[:, None]).sum(axis=1))
        flat = top.reshape(-1)
        feats = {key: np.asarray(v, dtype=object)[flat] for key, v in (catalog_features or {}).items()}
        ranking = score_pairs(head, np.repeat(q, c, axis=0), item_embeddings[flat], feats, history=hist,
                              catalog_embeddings=item_embeddings).reshape(len(t), c)
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
    predictions = score_pairs(model.ranking_head, query_embeddings, item_embeddings[positions], feats,
                              history=split_history(examples), catalog_embeddings=item_embeddings)
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
        seen = data.seen_items(split)
        exclude = [np.array([catalog.position[i] for i in seen.get(u, ())], dtype=np.int64)
                   for u in examples.user_id]
    report = {"objective": task.objective, "pairs": int(len(targets)),
              "model": label_metrics(model, data, split, query_embeddings, item_embeddings),
              "baselines": label_baselines(data.train.item_id, train_targets, examples.item_id, targets,
                                           task.objective),
              "reranking": reranking_ndcg(head, query_embeddings, item_embeddings, positions, catalog_features,
                                          candidates, k, exclude, history=split_history(examples))}
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
