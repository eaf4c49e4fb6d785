"""Full-catalog evaluation: every test query is scored against every item.

Metrics (one target item per query, rank r counted from 1):
``recall@k`` = share of queries with r <= k; ``ndcg@k`` = mean of
1/log2(r + 1) when r <= k, else 0; ``mrr`` = mean of 1/r.
Ties are broken against the target (an item scoring exactly the target's
score ranks before it), so a constant model cannot look good.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec.data.dataset import RetrievalData

log = logging.getLogger("tfrec")


def embed(tower: tf.keras.layers.Layer, features: dict, batch_size: int = 1024, progress: str | None = None
          ) -> np.ndarray:
    """Runs a tower over feature arrays in batches: float32 [n, dim].

    Memory stays bounded by one batch of inputs plus the [n, dim] output. With
    ``progress`` (a label), a progress bar shows on a terminal (not in logs).
    """
    from tqdm.auto import tqdm

    n = len(next(iter(features.values())))
    fn = tf.function(lambda f: tower(f, training=False), reduce_retracing=True)
    out = []
    quiet = progress is None or not log.isEnabledFor(logging.INFO)
    for start in tqdm(range(0, n, batch_size), desc=progress, disable=True if quiet else None, unit="batch",
                      mininterval=2.0, leave=False):
        batch = {k: (tf.constant(v[start:start + batch_size].astype(str).tolist()) if v.dtype == object
                     else tf.constant(v[start:start + batch_size])) for k, v in features.items()}
        out.append(fn(batch).numpy())
    return np.concatenate(out) if out else np.zeros([0, 0], np.float32)


def target_ranks(query_embeddings: np.ndarray, item_embeddings: np.ndarray, targets: np.ndarray,
                 exclude: list[np.ndarray] | None = None, batch_size: int = 1024) -> np.ndarray:
    """1-based rank of each query's target among all items.

    Args:
      query_embeddings: float32 [num_queries, dim].
      item_embeddings: float32 [num_items, dim].
      targets: int [num_queries], the target's row in ``item_embeddings``.
      exclude: per query, item rows to leave out of the ranking (never the target).
    Returns:
      int64 [num_queries].
    """
    items = tf.constant(item_embeddings, tf.float32)
    ranks = []
    for start in range(0, len(targets), batch_size):
        q = tf.constant(query_embeddings[start:start + batch_size], tf.float32)
        scores = tf.matmul(q, items, transpose_b=True).numpy()
        rows = np.arange(len(scores))
        t = targets[start:start + batch_size]
        target_scores = scores[rows, t]
        if exclude is not None:
            for r, skip in enumerate(exclude[start:start + batch_size]):
                skip = skip[skip != t[r]]
                scores[r, skip] = -np.inf
        beats = (scores >= target_scores[:, None]).sum(axis=1)  # includes the target itself
        ranks.append(beats)
    return np.concatenate(ranks).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@k, NDCG@k for each k, and MRR, from 1-based ranks [num_queries]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks <= k))
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def _targets_and_exclusions(data: RetrievalData, split: str, exclude_seen: bool):
    examples = getattr(data, split)
    targets = np.array([data.catalog.position[i] for i in examples.item_id], dtype=np.int64)
    exclude = None
    if exclude_seen:
        seen = data.seen_items()
        exclude = [np.array([data.catalog.position[i] for i in seen.get(u, ())], dtype=np.int64)
                   for u in examples.user_id]
    return targets, exclude


def evaluate_embeddings(query_embeddings: np.ndarray, item_embeddings: np.ndarray, data: RetrievalData,
                        split: str, ks: list[int], exclude_seen: bool = False) -> dict[str, float]:
    """Metrics of precomputed embeddings on ``split`` ("validation" or "test")."""
    targets, exclude = _targets_and_exclusions(data, split, exclude_seen)
    return metrics_from_ranks(target_ranks(query_embeddings, item_embeddings, targets, exclude), ks)


# ----------------------------------------------------------------- baselines
def popularity_baseline(data: RetrievalData, split: str, ks: list[int], exclude_seen: bool = False) -> dict:
    """Every query gets the catalog ordered by training interaction count."""
    n = len(data.catalog)
    # Ties between equally popular items are broken by catalog order.
    scores = data.item_counts().astype(np.float64) - np.arange(n) / (2.0 * n)
    targets, exclude = _targets_and_exclusions(data, split, exclude_seen)
    q = np.ones([len(targets), 1], np.float32)
    return metrics_from_ranks(target_ranks(q, scores[:, None].astype(np.float64), targets, exclude), ks)


def id_two_tower_baseline(data: RetrievalData, split: str, ks: list[int], epochs: int = 10, dim: int = 64,
                          batch_size: int = 256, seed: int = 0, exclude_seen: bool = False,
                          monitor: str = "recall@10") -> dict:
    """A plain TFRS id-only two-tower (user id -> item id), trained on the same split.

    Treated like the main model: Adam, and the epoch with the best validation
    ``monitor`` is the one evaluated (id models overfit fast on leave-last).
    """
    tf.keras.utils.set_random_seed(seed)
    users = sorted(set(data.train.user_id))
    lookup = tf.keras.layers.StringLookup
    user_model = tf.keras.Sequential([lookup(vocabulary=users, mask_token=None),
                                      tf.keras.layers.Embedding(len(users) + 1, dim)])
    item_model = tf.keras.Sequential([lookup(vocabulary=data.catalog.item_ids, mask_token=None),
                                      tf.keras.layers.Embedding(len(data.catalog) + 1, dim)])

    class IdTwoTower(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user_model, self.item_model = user_model, item_model
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            return self.task(self.user_model(features["user_id"]), self.item_model(features["item_id"]),
                             compute_metrics=False)

    model = IdTwoTower()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensor_slices({"user_id": data.train.user_id, "item_id": data.train.item_id})
    ds = ds.shuffle(len(data.train), seed=seed).batch(batch_size).cache()
    val_users = tf.constant(data.validation.user_id)
    eval_users = tf.constant(getattr(data, split).user_id)
    best, best_value = None, -1.0
    for _ in range(epochs):
        model.fit(ds, epochs=1, verbose=0)
        items = model.item_model(tf.constant(data.catalog.item_ids)).numpy()
        value = evaluate_embeddings(model.user_model(val_users).numpy(), items, data, "validation", [int(
            monitor.split("@")[1])], exclude_seen)[monitor]
        if value > best_value:
            best_value, best = value, (model.user_model(eval_users).numpy(), items)
    targets, exclude = _targets_and_exclusions(data, split, exclude_seen)
    return metrics_from_ranks(target_ranks(best[0], best[1], targets, exclude), ks)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, one row per model, one column per metric."""
    names = list(next(iter(results.values())).keys())
    width = max(len(n) for n in results) + 2
    lines = [" " * width + "".join(f"{m:>11}" for m in names)]
    for model, values in results.items():
        lines.append(f"{model:<{width}}" + "".join(f"{values.get(m, float('nan')):>11.4f}" for m in names))
    return "\n".join(lines)
