"""The index stage of an export: which kinds to build, building one, and the recall gate an approximate
(or quantised) index must pass before anything is published."""

from __future__ import annotations

import logging

import numpy as np

from tfrec import index as index_lib
from tfrec.errors import UserError
from tfrec.index.hybrid import HybridIndex

log = logging.getLogger("tfrec")


def index_kinds(choice: str, quantization: str = "none") -> list[str]:
    """Index kinds to export: ``export.index`` (all = the three), each in its int8 form if it has one and
    ``export.quantization`` is int8 (scann quantises already)."""
    kinds = ["brute_force", "ivf", "scann"] if choice == "all" else [choice]
    return [index_lib.INT8_KINDS.get(kind, kind) if quantization == "int8" else kind for kind in kinds]


def model_name_for(base: str, kind: str) -> str:
    """brute_force -> <base>, brute_force_int8 -> <base>_int8, other kinds -> <base>_<kind>."""
    if kind.startswith("brute_force"):
        return base + kind[len("brute_force"):]
    return f"{base}_{kind}"


def build_index_of_kind(kind: str, item_embeddings: np.ndarray, item_ids: list[str], k: int, params: dict | None = None):
    if kind == "brute_force":
        return index_lib.BruteForceIndex(item_embeddings, item_ids, k), None
    if kind == "brute_force_int8":
        return index_lib.BruteForceInt8Index(item_embeddings, item_ids, k), None
    return index_lib.build_index(kind, item_embeddings, item_ids, k, **(params or {}))


class ExportRefused(UserError):
    """An approximate index missed ``export.min_recall``; nothing was published."""


def check_recall(idx, item_embeddings: np.ndarray, item_ids: list[str], query_embeddings: np.ndarray, k: int,
                 min_recall: float, query_text: list[str] | None = None) -> dict[str, float]:
    """Recall of ``idx`` against exact search on held-out queries; raises ExportRefused below the gate.

    Args:
      query_embeddings: float32 [num_queries, d], e.g. the test split's queries.
      query_text: [num_queries] their texts, for a hybrid index (recall of the fused top-k).
    Returns:
      ``{"recall@10": r10, "recall@K": rK}`` (K = the index's k).
    """
    exact = index_lib.BruteForceIndex(item_embeddings, item_ids, k)
    cutoffs = sorted({min(10, k), k})
    hybrid = getattr(idx, "hybrid", False)
    if hybrid:
        exact = HybridIndex(exact, idx.lexical, item_embeddings, item_ids, idx.weight, idx.fusion)
    recall = {f"recall@{c}": index_lib.recall_against_exact(idx, exact, query_embeddings, k=c,
                                                            query_text=query_text if hybrid else None)
              for c in cutoffs}
    gate = recall[f"recall@{min(10, k)}"]
    log.info("export: %s index recall against exact search on %d held-out queries: %s", idx.kind,
             len(query_embeddings), ", ".join(f"{m}={v:.3f}" for m, v in recall.items()))
    if gate < min_recall:
        raise ExportRefused(f"export: the {idx.kind} index reached recall@{min(10, k)}={gate:.3f} against exact "
                            f"search on {len(query_embeddings)} held-out queries, below export.min_recall="
                            f"{min_recall}; no version was published ({_recall_advice(idx.kind)}, or lower "
                            "export.min_recall)")
    return recall


def _recall_advice(kind: str) -> str:
    if kind == "brute_force_int8":
        return "int8 codes lose too much here: export.quantization: none"
    advice = "search more partitions/leaves"
    return advice + (", or export.quantization: none" if kind.endswith("_int8") else "")
