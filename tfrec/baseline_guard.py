"""What the export serves where a baseline is exactly servable: the trained choice only when validation shows it better.

Two baselines can be served exactly, with nothing trained in them: ``bm25``
(lexical weight 1 of :mod:`tfrec.hybrid`, the ``bm25`` baseline's ranking
and ties) and ``content`` (the towers' untrained start of
:mod:`tfrec.text_skip`, the encoder's cosine). Fusion, weight and epoch are
each picked as the best of many on the validation queries, so on a few dozen
queries the pick is often ahead of a baseline by chance and behind it on
test. The trained choice (the kept epoch's towers, fused with BM25 or not) is
served only when, against every baseline that can be served, it is better on
validation beyond the noise of that many queries:

* by a one-sided sign test on ``train.early_stopping_metric`` per query
  (queries where it is higher against queries where it is lower, equal ones
  left out; McNemar's exact test for a recall), at :data:`ALPHA`: with no
  query lost, at least 5 won;
* and not lower on mrr over the validation queries.

Otherwise the best baseline on validation (metric, then mrr; ties: the first
of :data:`BASELINES`) is served, and test equals that baseline exactly.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05  # one-sided: 5 queries won and none lost is p = 1/32
BASELINES = ("content", "bm25")  # the order that breaks a tie between them


def per_query(ranks: np.ndarray, metric: str) -> np.ndarray:
    """float64 [n]: each query's ``metric`` (``recall@K``, ``ndcg@K`` or ``mrr``) from its target's 1-based rank [n],
    as :func:`tfrec.evaluate.metrics_from_ranks` averages it."""
    ranks = np.asarray(ranks, np.float64)
    if metric == "mrr":
        return 1.0 / ranks
    name, cutoff = metric.split("@")
    inside = ranks <= int(cutoff)
    return inside.astype(np.float64) if name == "recall" else np.where(inside, 1.0 / np.log2(ranks + 1.0), 0.0)


def sign_test(better: np.ndarray, worse: np.ndarray) -> tuple[int, int, float]:
    """(queries won, queries lost, one-sided p) of ``better`` [n] against ``worse`` [n], paired by query.

    p is the chance of winning at least that many of the won-or-lost queries if each went either way with
    even odds (1.0 when none differs).
    """
    won, lost = int(np.sum(better > worse)), int(np.sum(better < worse))
    n = won + lost
    # log C(n, i) - n log 2 for i = won..n, summed in float64 (exact integers would take seconds at 10^4 queries)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(won, n + 1)]
    return won, lost, float(min(1.0, np.sum(np.exp(logs))))


def beats(candidate: np.ndarray, baseline: np.ndarray, metric: str) -> tuple[bool, str]:
    """Whether ranks ``candidate`` [n] beat ranks ``baseline`` [n] beyond noise (see the module), and the figures."""
    won, lost, p = sign_test(per_query(candidate, metric), per_query(baseline, metric))
    mrr = float(np.mean(per_query(candidate, "mrr"))), float(np.mean(per_query(baseline, "mrr")))
    shown = f"{metric} higher on {won} queries, lower on {lost} (p={p:.3f}), mrr {mrr[0]:.4f} against {mrr[1]:.4f}"
    return p < ALPHA and mrr[0] >= mrr[1], shown


def keep_or_baseline(metric: str, candidate: np.ndarray, baselines: dict[str, np.ndarray]
                     ) -> tuple[str | None, str]:
    """The baseline to serve instead of the trained choice (None: keep the trained choice), and why in one line.

    Args:
      metric: ``train.early_stopping_metric``.
      candidate: int64 [n] the validation targets' ranks under the trained choice.
      baselines: name (of :data:`BASELINES`) -> int64 [n] the same targets' ranks under that baseline.
    """
    verdicts = {name: beats(candidate, ranks, metric) for name, ranks in baselines.items()}
    if all(ok for ok, _ in verdicts.values()):
        return None, "the trained choice beats " + "; ".join(f"{n} ({why})" for n, (_, why) in verdicts.items())
    def value(name):
        ranks = baselines[name]
        return float(np.mean(per_query(ranks, metric))), float(np.mean(per_query(ranks, "mrr"))), -BASELINES.index(name)
    best = max(baselines, key=value)
    missed = "; ".join(f"{n} ({why})" for n, (ok, why) in verdicts.items() if not ok)
    return best, f"serving {best}: on validation the trained choice does not beat {missed} beyond noise " \
                 f"(a sign test at {ALPHA} and mrr)"
