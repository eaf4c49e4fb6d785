"""The ``data`` section: where the interactions and the catalog live, how they split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from tfrec.config.parse import check

Format = Literal["auto", "csv", "tsv", "jsonl", "tfrecord", "recbole"]


@dataclass(frozen=True)
class InteractionsConfig:
    """Where the (query, item) interactions live and which columns mean what."""

    path: str = ""
    format: Format = "auto"
    query_column: Optional[str] = None
    query_history_items: Optional[int] = None
    query_history_columns: Optional[list[str]] = None  # default: items.text_columns
    item_id_column: str = "item_id"
    user_id_column: Optional[str] = None
    timestamp_column: Optional[str] = None
    label_column: Optional[str] = None
    # Retrieval learns from positives only: with a label column, rows whose label is below this are dropped
    # before splitting (counted in eval.json's data.skipped.below_positive_threshold), e.g. 4 for 1-5 ratings.
    positive_threshold: Optional[float] = None
    # A column of per-example weights (finite, >= 0) that scales each row's loss; 0 removes the row's
    # contribution. Full-catalog metrics stay unweighted.
    sample_weight_column: Optional[str] = None
    # Stream the training interactions from TFRecord shards each epoch instead of reading them into memory
    # (tfrec.data.stream); needs split.method=files and a query_column.
    streaming: bool = False


@dataclass(frozen=True)
class ItemsConfig:
    """The catalog: one row per item."""

    path: str = ""
    format: Format = "auto"
    item_id_column: str = "item_id"
    text_columns: list[str] = field(default_factory=lambda: ["title"])
    categorical_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitConfig:
    method: Literal["random", "time", "leave_last", "files"] = "leave_last"
    validation_path: str = ""  # method=files: interactions.path is the training set, these the held-out sets
    test_path: str = ""
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class DataConfig:
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # What may be skipped (and counted) instead of stopping with an error.
    skip_unknown_items: bool = True
    skip_empty_queries: bool = True
    max_error_rows: int = 0  # unreadable rows tolerated before failing

    def validate(self, cfg) -> None:
        """Checks this section (``cfg``: the whole tree, for the rules that span sections); raises ConfigError."""
        d = self
        check(bool(d.interactions.path), "data.interactions.path", "is required")
        check(bool(d.items.path), "data.items.path", "is required")
        has_q = d.interactions.query_column is not None
        has_h = d.interactions.query_history_items is not None
        check(has_q or has_h, "data.interactions.query_column",
              "set query_column (query text), query_history_items (the user's previous items), or both")
        if has_q and has_h:
            check(cfg.model.history_encoder != "text", "model.history_encoder",
                  "'text' builds the query text from the history; with data.interactions.query_column set, pick "
                  "mean, attention, gru or transformer")
            check(not d.interactions.streaming, "data.interactions.query_history_items",
                  "needs every interaction in memory; not available with data.interactions.streaming")
        if has_h:
            check(d.interactions.query_history_items >= 1, "data.interactions.query_history_items", "must be >= 1")
            check(d.interactions.user_id_column is not None, "data.interactions.user_id_column",
                  "is required when queries are built from history (query_history_items)")
        check(len(d.items.text_columns) >= 1 or cfg.model.item_text_encoder == "none",
              "data.items.text_columns", "needs at least one column")
        if d.split.method == "files":
            for k in ("validation_path", "test_path"):
                check(bool(getattr(d.split, k)), f"data.split.{k}", "is required by data.split.method=files (the "
                      "held-out interactions, with the same columns as data.interactions.path)")
        if d.interactions.streaming:
            check(d.split.method == "files", "data.interactions.streaming",
                  "streams the training file only: set data.split.method=files with validation_path and test_path")
            check(has_q, "data.interactions.streaming",
                  "needs data.interactions.query_column (history-built queries need every interaction in memory)")
            check(d.interactions.format in ("auto", "tfrecord"), "data.interactions.streaming",
                  "reads TFRecord shards; convert the file with python -m tfrec.data.to_tfrecord")
            check(not cfg.eval.exclude_seen, "eval.exclude_seen",
                  "needs every training interaction in memory; set it to false with data.interactions.streaming")
            check(cfg.ranking.weight == 0, "ranking.weight",
                  "the ranking evaluation needs the training labels in memory; not available with "
                  "data.interactions.streaming")
        if d.interactions.positive_threshold is not None:
            check(d.interactions.label_column is not None, "data.interactions.positive_threshold",
                  "needs data.interactions.label_column (the label compared with it)")
            check(cfg.ranking.weight == 0, "data.interactions.positive_threshold",
                  "drops the low labels the ranking head learns from; set it to null when ranking.weight > 0")
            check(not d.interactions.streaming, "data.interactions.positive_threshold",
                  "is not applied to streamed shards; filter the TFRecord files instead")
        if d.interactions.sample_weight_column is not None:
            check(bool(d.interactions.sample_weight_column), "data.interactions.sample_weight_column",
                  "must name a column (or be null)")
            check(not d.interactions.streaming, "data.interactions.sample_weight_column",
                  "is not read from streamed shards; set it to null with data.interactions.streaming")
        if d.split.method in ("time", "leave_last"):
            check(d.interactions.timestamp_column is not None, "data.interactions.timestamp_column",
                  f"is required by data.split.method={d.split.method}")
        if d.split.method == "leave_last":
            check(d.interactions.user_id_column is not None, "data.interactions.user_id_column",
                  "is required by data.split.method=leave_last")
        for k in ("test_fraction", "validation_fraction"):
            v = getattr(d.split, k)
            check(0.0 < v < 0.5, f"data.split.{k}", f"must be in (0, 0.5), got {v}")
        check(d.max_error_rows >= 0, "data.max_error_rows", "must be >= 0")
