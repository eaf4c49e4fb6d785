"""Hybrid retrieval chosen on validation: how much BM25 to mix into the dense score, and whether at all.

After training, with query text and item text, the fusion of
:class:`tfrec.index.hybrid.HybridIndex` (a weighted sum of min-max normalised
scores, or reciprocal rank fusion: :data:`tfrec.index.hybrid.FUSIONS`) and its
lexical weight are chosen on the validation split (the same seeded sample as
the epochs' validation) over every fusion and :data:`WEIGHTS`, by
``train.early_stopping_metric``. ``retrieval.hybrid``:

* ``off``: dense only (as before);
* ``auto`` (default): the best (fusion, weight) when it beats the dense model
  (weight 0) on validation, else dense only; then that trained choice is
  served only where it beats the exact baselines beyond the noise of the
  validation queries (:mod:`tfrec.baseline_guard`): BM25 alone (weight 1)
  and, with the text skip and frozen encoders, the towers' untrained start
  (``content``); else the best of those is served;
* ``on``: the best weight above 0, even if validation prefers dense.

``retrieval.hybrid_fusion`` restricts the choice to one fusion;
``retrieval.hybrid_weight`` skips it (0: dense only; its fusion, if not set,
the first of :data:`FUSIONS`), and ``retrieval.hybrid_baseline: content``
serves the untrained start. After a run chooses, :func:`keep_choice` writes
them into the job dir's ``params.yaml``, so ``--config params.yaml`` serves
the same without choosing again.

Weight 1 is BM25 alone with the ``bm25`` baseline's ties (training popularity,
then catalog order), so where exact words are all that matters validation can
serve exactly what ``bm25`` ranks. The test split is then scored the way the
export serves it (the same candidates, the same fusion code, the evaluator's
exclusions), and ``eval.json`` reports that as ``model``, with
``model_variants.dense`` (weight 0, the towers alone) and
``model_variants.lexical`` (weight 1) beside it and the choice under
``hybrid``; the export reads fusion and weight back from there.

Ranks: a target among the query's candidates is ranked by its fused score
(equal scores by the tie order, as the served top k orders them); one outside
them comes after every candidate, in its dense order. Cut-offs up to
``export.k`` are exact; beyond it an approximation.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import numpy as np

from tfrec import config as config_lib
from tfrec import baseline_guard, evaluate, fileio, hybrid_ranks, text_skip
from tfrec import index as index_lib
from tfrec.errors import ConfigError
from tfrec.index.hybrid import FUSIONS, HybridIndex
from tfrec.lexical import BM25
from tfrec.lexical_graph import LexicalScorer

Choice = tuple[str, float]  # (fusion, lexical weight)

log = logging.getLogger("tfrec")
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # 0.99: BM25 first, dense breaks its ties


def applies(cfg, model, data) -> bool:
    """Hybrid search is possible and not switched off: query text in, item text in the catalog."""
    return (cfg.retrieval.hybrid != "off" and model.query_tower.encoder is not None
            and any(t.strip() for t in data.catalog.texts))


def lexical_scorer(data) -> LexicalScorer:
    """In-graph BM25 over the catalog's texts, equal scores ordered as the ``bm25`` baseline orders them."""
    return LexicalScorer(BM25(data.catalog.texts), evaluate.popularity_order(data.item_counts()))


def exact_hybrid(item_embeddings: np.ndarray, data, k: int, weight: float = 0.0,
                 lexical: LexicalScorer | None = None, fusion: str = FUSIONS[0]) -> HybridIndex:
    """A brute-force :class:`HybridIndex` over the catalog (what the brute-force export serves)."""
    ids = data.catalog.item_ids
    return HybridIndex(index_lib.BruteForceIndex(item_embeddings, ids, k), lexical or lexical_scorer(data),
                       item_embeddings, ids, weight, fusion)


def fused_ranks(index: HybridIndex, query_embeddings: np.ndarray, query_text: list[str], targets: np.ndarray,
                exclude: list[np.ndarray] | None, dense_ranks: np.ndarray, weights=WEIGHTS,
                fusions=FUSIONS) -> dict[Choice, np.ndarray]:
    """1-based rank of each target under the fused score, for every fusion and weight
    (:func:`tfrec.hybrid_ranks.fused_ranks`: the served candidates and fusion, a whole split at once).

    Args:
      index: the :class:`HybridIndex` that defines the candidates.
      query_embeddings: float32 [n, d]; query_text: [n]; targets: int64 [n] catalog rows.
      exclude: per query, catalog rows left out (the target is kept), or None.
      dense_ranks: int64 [n], the targets' dense ranks (for targets outside the candidates).
    Returns:
      {(fusion, weight): int64 [n]}.
    """
    return hybrid_ranks.fused_ranks(index, query_embeddings, query_text, targets, exclude, dense_ranks, weights,
                                    fusions)


def ranks_by_choice(embeddings: tuple[np.ndarray, np.ndarray], data, split: str, cfg, weights=WEIGHTS,
                    lexical: LexicalScorer | None = None, fusions=FUSIONS,
                    dense_ranks: np.ndarray | None = None) -> dict[Choice, np.ndarray]:
    """{(fusion, weight): int64 [len(split)]} each target's 1-based rank under every fusion and weight, with the
    evaluator's exclusions (the sign test of :mod:`tfrec.baseline_guard` pairs them by query).

    Args:
      embeddings: (query float32 [len(split), d], items float32 [num_items, d]).
      dense_ranks: int64 [len(split)], the evaluator's dense ranks of the targets (None: computed here).
    """
    queries, items = embeddings
    targets, exclude = evaluate._targets_and_exclusions(data, split, cfg.eval.exclude_seen)
    if dense_ranks is None:
        dense_ranks = evaluate.target_ranks(queries, items, targets, exclude)
    index = exact_hybrid(items, data, cfg.export.k, lexical=lexical)
    return fused_ranks(index, queries, getattr(data, split).query_text, targets, exclude, dense_ranks, weights,
                       fusions)


def metrics_by_choice(embeddings: tuple[np.ndarray, np.ndarray], data, split: str, cfg, weights=WEIGHTS,
                      lexical: LexicalScorer | None = None, fusions=FUSIONS,
                      dense_ranks: np.ndarray | None = None) -> dict[Choice, dict]:
    """{(fusion, weight): metrics} of :func:`ranks_by_choice`, at the evaluator's ks."""
    ranks = ranks_by_choice(embeddings, data, split, cfg, weights, lexical, fusions, dense_ranks)
    return {c: evaluate.metrics_from_ranks(r, cfg.eval.ks) for c, r in ranks.items()}


def guard(cfg, val_data, val_ranks: dict[Choice, np.ndarray], chosen: Choice | None, start: Callable | None,
          lexical: LexicalScorer) -> tuple[str | None, str]:
    """:func:`tfrec.baseline_guard.keep_or_baseline` for ``auto``: the baseline to serve instead of ``chosen``
    (``bm25``, ``content`` or None) and why; ``start(data, split)``: the untrained start's embeddings, or None.
    Every rank comes from :func:`fused_ranks` (the start's at weight 0), so all are exact up to ``export.k``
    and approximated alike beyond it."""
    baselines = {"bm25": next(r for (f, w), r in val_ranks.items() if w == 1.0)}  # every fusion: BM25 alone
    if start is not None:
        at_start = ranks_by_choice(start(val_data, "validation"), val_data, "validation", cfg, [0.0], lexical,
                                   FUSIONS[:1])
        baselines = {"content": at_start[FUSIONS[0], 0.0], **baselines}
    candidate = val_ranks[chosen] if chosen is not None else next(r for (f, w), r in val_ranks.items() if w == 0.0)
    return baseline_guard.keep_or_baseline(cfg.train.early_stopping_metric, candidate, baselines)


def plateau(weights: list[float]) -> list[float]:
    """The longest run of consecutive :data:`WEIGHTS` in ``weights`` (the first such run)."""
    longest, run = [], []
    for w in WEIGHTS:
        run = run + [w] if w in weights else []
        if len(run) > len(longest):
            longest = run
    return longest


def choose(setting: str, metric: str, validation: dict[Choice, dict]) -> tuple[Choice | None, str]:
    """The (fusion, lexical weight) to serve (None: dense only) and why, from validation metrics.

    Choices are compared by ``metric``, then by mrr. Several weights often share the best values (on a
    few hundred queries, whole ranges of weights give the same ranks): the one served is the middle of the
    longest run of consecutive best weights, of the fusion with the longest such run (ties: the fusion listed
    first in :data:`FUSIONS`), so that a weight at the run's edge, one step from worse, is not what ships.
    ``auto`` keeps it only when it beats weight 0 (dense); ``on`` keeps the best above 0.
    """
    def key(c):
        return validation[c][metric], validation[c]["mrr"]

    dense_choice = min(c for c in validation if c[1] == 0.0)
    dense = validation[dense_choice][metric]
    top = max(key(c) for c in validation if c[1] > 0)
    runs = {f: plateau([w for g, w in validation if g == f and w > 0 and key((g, w)) == top]) for f in FUSIONS}
    fusion = max(FUSIONS, key=lambda f: (len(runs[f]), -FUSIONS.index(f)))
    best = (fusion, runs[fusion][(len(runs[fusion]) - 1) // 2])
    got, named = validation[best][metric], f"{best[0]} with lexical weight {best[1]}"
    if setting == "on":
        return best, f"retrieval.hybrid=on: {named} (validation {metric}={got:.4f}, dense {dense:.4f})"
    if key(best) > key(dense_choice):
        return best, (f"retrieval.hybrid=auto: {named} beats dense on validation ({metric}, mrr: {got:.4f}, "
                      f"{key(best)[1]:.4f} against {dense:.4f}, {key(dense_choice)[1]:.4f})")
    return None, f"retrieval.hybrid=auto: dense only (validation {metric}={dense:.4f}, best fusion {got:.4f})"


def configured(cfg) -> tuple[Choice | None, str | None, str] | None:
    """What the config fixes: (choice, baseline, reason), or None where validation chooses.

    ``retrieval.hybrid_baseline``: ``content`` serves the towers' untrained start, ``bm25`` lexical weight 1;
    else ``retrieval.hybrid_weight``
    fixes the weight (0: dense only; 1: BM25 alone, as the ``bm25`` baseline ranks).
    """
    r = cfg.retrieval
    if r.hybrid_baseline == "content":
        return None, "content", "retrieval.hybrid_baseline=content in the config: the untrained start is served"
    if r.hybrid_baseline == "bm25":
        return (r.hybrid_fusion or FUSIONS[0], 1.0), "bm25", "retrieval.hybrid_baseline=bm25 in the config: BM25 alone"
    if r.hybrid_weight is None:
        return None
    baseline = None
    if r.hybrid_weight == 0:
        return None, baseline, "retrieval.hybrid_weight=0 in the config: dense only (not chosen on validation)"
    chosen = (r.hybrid_fusion or FUSIONS[0], r.hybrid_weight)
    return chosen, baseline, (f"{chosen[0]} with lexical weight {chosen[1]}, as the config sets (not chosen on "
                              "validation)")


def choose_and_evaluate(cfg, data, validation_embeddings: Callable[[object], tuple[np.ndarray, np.ndarray]],
                        test_embeddings: tuple[np.ndarray, np.ndarray], dense_test: dict,
                        dense_test_ranks: np.ndarray | None = None, start: Callable | None = None
                        ) -> tuple[dict, dict]:
    """Chooses fusion and weight on validation (unless the config sets them), then (``auto``) keeps that trained
    choice only where it beats the exact baselines (:mod:`tfrec.baseline_guard`), and scores the test split as
    the export will serve it.

    Args:
      validation_embeddings: the seeded validation sample the epochs validated on (a RetrievalData) -> (queries
        [n, d], items [num_items, d]); called only when validation chooses.
      test_embeddings: (queries [len(test), d], items [num_items, d]).
      dense_test: the towers' own test metrics; dense_test_ranks: int64 [len(test)], their ranks (the evaluator's;
        None: computed again).
      start: ``start(data, split)`` -> (queries [n, d], items [num_items, d]) of the towers' untrained start
        (:func:`tfrec.text_skip.at_start`), the ``content`` baseline the export can serve; None: none.
    Returns:
      (``model`` metrics the export serves, the ``eval.json`` entries ``model_variants`` and ``hybrid``;
      ``hybrid.baseline`` is ``content`` where the caller must serve the start, closing the towers' gates).
    """
    lexical = lexical_scorer(data)
    metric = cfg.train.early_stopping_metric
    fusions = [cfg.retrieval.hybrid_fusion] if cfg.retrieval.hybrid_fusion else list(FUSIONS)
    validation = {}
    fixed = configured(cfg)
    if fixed is not None:
        chosen, baseline, reason = fixed
    else:
        val_data = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
        val_ranks = ranks_by_choice(validation_embeddings(val_data), val_data, "validation", cfg, lexical=lexical,
                                    fusions=fusions)
        validation = {c: evaluate.metrics_from_ranks(r, cfg.eval.ks) for c, r in val_ranks.items()}
        chosen, reason = choose(cfg.retrieval.hybrid, metric, validation)
        log.info("hybrid: %s", reason)
        auto = cfg.retrieval.hybrid == "auto"
        baseline, why = guard(cfg, val_data, val_ranks, chosen, start, lexical) if auto else (None, "")
        if baseline is not None:
            chosen, reason = ((fusions[0], 1.0) if baseline == "bm25" else None), f"{reason}; {why}"
        elif why:
            reason = f"{reason}; {why}"
        if why:
            log.info("hybrid: %s", why)
    if fixed is not None:
        log.info("hybrid: %s", reason)
    for fusion in fusions if validation else []:
        log.info("hybrid: validation %s, mrr of %s by lexical weight: %s", metric, fusion,
                 ", ".join(f"{w}={m[metric]:.4f},{m['mrr']:.4f}" for (f, w), m in validation.items() if f == fusion))
    if baseline == "content" and start is None:
        raise ConfigError("retrieval.hybrid_baseline", "is content (the towers' untrained start), but these towers "
                          "cannot give it back: it needs model.text_skip on and frozen encoders")
    fusion = (cfg.retrieval.hybrid_fusion or FUSIONS[0]) if chosen is None else chosen[0]
    weights = [1.0] + ([chosen[1]] if chosen is not None and chosen[1] != 1.0 else [])
    test = metrics_by_choice(test_embeddings, data, "test", cfg, weights, lexical=lexical, fusions=[fusion],
                             dense_ranks=dense_test_ranks)
    section = {"setting": cfg.retrieval.hybrid, "fusion": None if chosen is None else fusion,
               "weight": None if chosen is None else chosen[1], "baseline": baseline, "metric": metric,
               "reason": reason,
               "validation": {f: {str(w): m[metric] for (g, w), m in validation.items() if g == f}
                              for f in (fusions if validation else [])}}
    model = dense_test if chosen is None else test[chosen]
    if baseline == "content":
        model = evaluate.evaluate_embeddings(*start(data, "test"), data, "test", cfg.eval.ks, cfg.eval.exclude_seen)
    return model, {"model_variants": {"dense": dense_test, "lexical": test[fusion, 1.0]}, "hybrid": section}


def evaluate_served(cfg, data, model, embed: Callable, test_embeddings: tuple[np.ndarray, np.ndarray],
                    dense_test: dict, dense_test_ranks: np.ndarray | None = None
                    ) -> tuple[dict, dict, tuple[np.ndarray, np.ndarray]]:
    """:func:`choose_and_evaluate` for ``model``; where it serves the untrained start (``content``), closes the
    towers' gates (:func:`tfrec.text_skip.close_gates`) so that the model and its export are that start.

    Args:
      embed: ``embed(data, split)`` -> (queries [n, d], items [num_items, d]) through ``model``'s towers.
      test_embeddings: (queries [len(test), d], items [num_items, d]) of the kept towers; dense_test: their metrics;
        dense_test_ranks: int64 [len(test)], their ranks.
    Returns:
      (``model`` metrics, the ``eval.json`` entries, the served towers' test embeddings).
    """
    def start(d, split):
        with text_skip.at_start(model):
            return embed(d, split)
    results, extra = choose_and_evaluate(cfg, data, lambda val: embed(val, "validation"), test_embeddings,
                                         dense_test, dense_test_ranks,
                                         start if text_skip.start_recoverable(model) else None)
    if extra["hybrid"]["baseline"] == "content":
        text_skip.close_gates(model)
        test_embeddings = embed(data, "test")
    return results, extra, test_embeddings


def resolved(cfg, extra: dict | None):
    """``cfg`` with ``retrieval.hybrid_fusion``, ``hybrid_weight`` and ``hybrid_baseline`` as the run served them
    (weight 0: dense only); ``cfg`` itself when the run chose nothing (``extra``: :func:`choose_and_evaluate`'s)."""
    section = (extra or {}).get("hybrid")
    if section is None:
        return cfg
    return config_lib.updated(cfg, {"retrieval.hybrid_fusion": section["fusion"] or cfg.retrieval.hybrid_fusion,
                                    "retrieval.hybrid_weight": section["weight"] or 0.0,
                                    "retrieval.hybrid_baseline": section.get("baseline")})


def keep_choice(cfg, job, extra: dict | None):
    """:func:`resolved`, written to ``job/params.yaml`` when it differs, so ``--config params.yaml`` serves the same
    without choosing again; returns it."""
    kept = resolved(cfg, extra)
    if kept != cfg:
        fileio.write_text(fileio.join(job, "params.yaml"), config_lib.to_yaml(kept))
        r = kept.retrieval
        log.info("hybrid: params.yaml holds retrieval.hybrid_fusion=%s, retrieval.hybrid_weight=%s, "
                 "retrieval.hybrid_baseline=%s", r.hybrid_fusion, r.hybrid_weight, r.hybrid_baseline)
    return kept


def _section(job_dir) -> dict:
    """The ``hybrid`` entry of a finished run's ``eval.json`` ({} without one)."""
    path = fileio.join(job_dir, "eval.json")
    if not fileio.isfile(path):
        return {}
    return json.loads(fileio.read_text(path)).get("hybrid") or {}


def served_choice(job_dir) -> Choice | None:
    """The (fusion, lexical weight) a finished run's ``eval.json`` chose (None: dense only, or no eval.json)."""
    section = _section(job_dir)
    if section.get("weight") is None:
        return None
    return section.get("fusion") or FUSIONS[0], float(section["weight"])


def serves_start(job_dir) -> bool:
    """Whether a finished run serves its towers' untrained start (``eval.json``'s ``hybrid.baseline`` ``content``)."""
    return _section(job_dir).get("baseline") == "content"
