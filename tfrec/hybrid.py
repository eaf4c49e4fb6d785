"""Hybrid retrieval chosen on validation: how much BM25 to mix into the dense score, and whether at all.

After training, with query text and item text, the lexical weight of
:class:`tfrec.index.hybrid.HybridIndex`'s fused score is chosen on the
validation split (the same seeded sample as the epochs' validation) over
:data:`WEIGHTS`, by ``train.early_stopping_metric``. ``retrieval.hybrid``:

* ``off``: dense only (as before);
* ``auto`` (default): the best weight when it beats the dense model (weight 0)
  on validation, else dense only;
* ``on``: the best weight above 0, even if validation prefers dense.

The test split is then scored the way the export serves it (the same
candidates, the same fusion code, the evaluator's exclusions), and
``eval.json`` reports that as ``model``, with ``model_variants.dense`` (weight 0,
the towers alone) and ``model_variants.lexical`` (weight 1) beside it and the
choice under ``hybrid``; the export reads the weight back from there.

Ranks: a target among the query's candidates is ranked by its fused score
(ties against it); one outside them comes after every candidate, in its dense
order. Cut-offs up to ``export.k`` are exact; beyond it an approximation.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import tensorflow as tf

from tfrec import evaluate, fileio
from tfrec import index as index_lib
from tfrec.index.hybrid import HybridIndex, fuse
from tfrec.lexical import BM25
from tfrec.lexical_graph import LexicalScorer

log = logging.getLogger("tfrec")
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # 0.99: BM25 first, dense breaks its ties
_BATCH = 128


def applies(cfg, model, data) -> bool:
    """Hybrid search is possible and not switched off: query text in, item text in the catalog."""
    return (cfg.retrieval.hybrid != "off" and model.query_tower.encoder is not None
            and any(t.strip() for t in data.catalog.texts))


def exact_hybrid(item_embeddings: np.ndarray, data, k: int, weight: float = 0.0,
                 lexical: LexicalScorer | None = None) -> HybridIndex:
    """A brute-force :class:`HybridIndex` over the catalog (what the brute-force export serves)."""
    ids = data.catalog.item_ids
    return HybridIndex(index_lib.BruteForceIndex(item_embeddings, ids, k),
                       lexical or LexicalScorer(BM25(data.catalog.texts)), item_embeddings, ids, weight)


def padded_ids(rows: list[np.ndarray] | None, item_ids: list[str], start: int, stop: int) -> np.ndarray:
    """Catalog rows to exclude per query -> string [stop - start, e] ids, "" padded."""
    if rows is None:
        return np.zeros([stop - start, 0], object)
    chunk = rows[start:stop]
    out = np.full([stop - start, max([len(r) for r in chunk] + [0])], "", object)
    for i, r in enumerate(chunk):
        out[i, :len(r)] = [item_ids[j] for j in r]
    return out


def fused_ranks(index: HybridIndex, query_embeddings: np.ndarray, query_text: list[str], targets: np.ndarray,
                exclude: list[np.ndarray] | None, dense_ranks: np.ndarray, weights=WEIGHTS,
                item_ids: list[str] | None = None) -> dict[float, np.ndarray]:
    """1-based rank of each target under the fused score, for every weight.

    Args:
      index: the :class:`HybridIndex` that defines the candidates.
      query_embeddings: float32 [n, d]; query_text: [n]; targets: int64 [n] catalog rows.
      exclude: per query, catalog rows left out (the target is kept), or None.
      dense_ranks: int64 [n], the targets' dense ranks (for targets outside the candidates).
      item_ids: [num_items] the catalog's ids (for the exclusions).
    Returns:
      {weight: int64 [n]}.
    """
    n = len(targets)
    out = {w: np.zeros(n, np.int64) for w in weights}
    keep = None if exclude is None else [np.asarray(e)[np.asarray(e) != t] for e, t in zip(exclude, targets)]
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        rows, dense, lexical, valid = index.candidates(
            tf.constant(query_embeddings[start:stop], tf.float32), tf.constant(list(query_text[start:stop])),
            tf.constant(padded_ids(keep, item_ids, start, stop), tf.string))
        rows = rows.numpy()
        is_target = (rows == targets[start:stop, None]) & valid.numpy()
        found = is_target.any(axis=1)
        outside = valid.numpy().sum(axis=1) + dense_ranks[start:stop]
        for w in weights:
            fused = fuse(dense, lexical, valid, w).numpy()
            mine = np.where(is_target, fused, -np.inf).max(axis=1, keepdims=True)
            ahead = ((fused >= mine) & ~is_target).sum(axis=1)
            out[w][start:stop] = np.where(found, 1 + ahead, outside)
    return out


def metrics_by_weight(embeddings: tuple[np.ndarray, np.ndarray], data, split: str, cfg, weights=WEIGHTS,
                      lexical: LexicalScorer | None = None) -> dict[float, dict]:
    """{weight: metrics} of the fused score on ``split``, with the evaluator's exclusions and ks.

    Args:
      embeddings: (query float32 [len(split), d], items float32 [num_items, d]).
    """
    queries, items = embeddings
    targets, exclude = evaluate._targets_and_exclusions(data, split, cfg.eval.exclude_seen)
    dense = evaluate.target_ranks(queries, items, targets, exclude)
    index = exact_hybrid(items, data, cfg.export.k, lexical=lexical)
    ranks = fused_ranks(index, queries, getattr(data, split).query_text, targets, exclude, dense, weights,
                        data.catalog.item_ids)
    return {w: evaluate.metrics_from_ranks(r, cfg.eval.ks) for w, r in ranks.items()}


def choose_weight(setting: str, metric: str, validation: dict[float, dict]) -> tuple[float | None, str]:
    """The lexical weight to serve (None: dense only) and why, from validation metrics by weight.

    ``auto`` keeps the best weight only when it beats weight 0 (dense); ``on`` keeps the best above 0.
    Weights are compared by ``metric``, then by mrr; equal values go to the smaller weight.
    """
    def key(w):
        return validation[w][metric], validation[w]["mrr"]

    dense = validation[0.0][metric]
    candidates = [w for w in sorted(validation) if w > 0]
    best = max(candidates, key=lambda w: (*key(w), -w))
    got = validation[best][metric]
    if setting == "on":
        return best, f"retrieval.hybrid=on: lexical weight {best} (validation {metric}={got:.4f}, dense {dense:.4f})"
    if key(best) > key(0.0):
        return best, (f"retrieval.hybrid=auto: lexical weight {best} beats dense on validation "
                      f"({metric}, mrr: {got:.4f}, {key(best)[1]:.4f} against {dense:.4f}, {key(0.0)[1]:.4f})")
    return None, f"retrieval.hybrid=auto: dense only (validation {metric}={dense:.4f}, best fusion {got:.4f})"


def choose_and_evaluate(cfg, data, validation_embeddings: tuple[np.ndarray, np.ndarray],
                        test_embeddings: tuple[np.ndarray, np.ndarray], dense_test: dict) -> tuple[dict, dict]:
    """Chooses the weight on validation and scores the test split as the export will serve it.

    Args:
      validation_embeddings, test_embeddings: (queries [n, d], items [num_items, d]) of each split
        (validation: the seeded sample the epochs validated on).
      dense_test: the towers' own test metrics (the evaluator's).
    Returns:
      (``model`` metrics the export serves, the ``eval.json`` entries ``model_variants`` and ``hybrid``).
    """
    lexical = LexicalScorer(BM25(data.catalog.texts))
    metric = cfg.train.early_stopping_metric
    val_data = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
    validation = metrics_by_weight(validation_embeddings, val_data, "validation", cfg, lexical=lexical)
    weight, reason = choose_weight(cfg.retrieval.hybrid, metric, validation)
    log.info("hybrid: %s", reason)
    log.info("hybrid: validation %s by lexical weight: %s", metric,
             ", ".join(f"{w}={m[metric]:.4f}" for w, m in validation.items()))
    wanted = [1.0] + ([weight] if weight not in (None, 1.0) else [])
    test = metrics_by_weight(test_embeddings, data, "test", cfg, wanted, lexical=lexical)
    section = {"setting": cfg.retrieval.hybrid, "fusion": "minmax_weighted_sum", "weight": weight,
               "metric": metric, "reason": reason,
               "validation": {str(w): m[metric] for w, m in validation.items()}}
    model = dense_test if weight is None else test[weight]
    return model, {"model_variants": {"dense": dense_test, "lexical": test[1.0]}, "hybrid": section}


def served_weight(job_dir) -> float | None:
    """The lexical weight a finished run's ``eval.json`` chose (None: dense only, or no eval.json)."""
    path = fileio.join(job_dir, "eval.json")
    if not fileio.isfile(path):
        return None
    weight = (json.loads(fileio.read_text(path)).get("hybrid") or {}).get("weight")
    return None if weight is None else float(weight)


def fused_recall(index: HybridIndex, exact: HybridIndex, query_embeddings: np.ndarray, query_text: list[str],
                 k: int) -> float:
    """Mean share of ``exact``'s fused top-k that ``index`` also returns (queries with an empty list skipped)."""
    fractions = []
    for start in range(0, len(query_text), _BATCH):
        q = tf.constant(query_embeddings[start:start + _BATCH], tf.float32)
        text = tf.constant(list(query_text[start:start + _BATCH]))
        got = index.search_hybrid(q, text)[1].numpy()[:, :k]
        want = exact.search_hybrid(q, text)[1].numpy()[:, :k]
        for g, w in zip(got, want):
            truth = {i for i in w if i}
            if truth:
                fractions.append(len(truth & set(g)) / len(truth))
    return float(np.mean(fractions)) if fractions else 1.0
