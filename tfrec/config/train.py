"""The ``train``, ``eval``, ``export`` and ``runtime`` sections: how a run trains, is measured and ships."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from tfrec.config.parse import check
from tfrec.export.layout import MODEL_NAME_RULE, valid_model_name


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    epochs: int = 10
    learning_rate: float = 3e-3
    encoder_learning_rate: float = 3e-5
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    early_stopping_metric: str = "recall@10"  # recall@K or ndcg@K on validation; K must be one of eval.ks
    # Stop after this many epochs in a row without a better validation early_stopping_metric (Keras'
    # EarlyStopping: 0 stops at the first such epoch, as 1 does); the model and every learned baseline.
    early_stopping_patience: int = 3
    cache_frozen_encoders: bool = True
    steps_per_execution: int = 1
    max_steps_per_epoch: Optional[int] = None
    seed: int = 1234
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    jit_compile: bool = False
    checkpoint_every_steps: Optional[int] = None  # also checkpoint every N steps inside an epoch; null = epoch ends
    log_every_steps: int = 10  # TensorBoard: training loss and learning rate every N steps
    histogram_every_epochs: int = 0  # TensorBoard: weight histograms every N epochs; 0 = none

    def validate(self, cfg) -> None:
        """Checks this section (``cfg``: the whole tree); raises ConfigError naming the key."""
        t = self
        check(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
        check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
        check(t.learning_rate > 0, "train.learning_rate", "must be > 0")
        check(t.encoder_learning_rate > 0, "train.encoder_learning_rate", "must be > 0")
        check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(0.0 <= t.warmup_fraction < 1.0, "train.warmup_fraction", "must be in [0, 1)")
        check(t.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
        check(t.steps_per_execution >= 1, "train.steps_per_execution", "must be >= 1")
        if t.max_steps_per_epoch is not None:
            check(t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch", "must be >= 1 or null")
        if t.checkpoint_every_steps is not None:
            check(t.checkpoint_every_steps >= 1, "train.checkpoint_every_steps", "must be >= 1 or null")
        check(t.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
        check(t.histogram_every_epochs >= 0, "train.histogram_every_epochs", "must be >= 0 (0 = no histograms)")
        metric = t.early_stopping_metric
        name, _, cutoff = metric.partition("@")
        check(name in ("recall", "ndcg") and cutoff.isdigit(),
              "train.early_stopping_metric", f"expected recall@K or ndcg@K, got {metric!r}")
        # Validation measures only eval.ks' cutoffs: any other K would leave every epoch unscored, no best one.
        check(int(cutoff) in cfg.eval.ks, "train.early_stopping_metric",
              f"{metric} is not measured: its K={cutoff} is not in eval.ks={list(cfg.eval.ks)}; add {cutoff} to "
              f"eval.ks or set train.early_stopping_metric={name}@{max(cfg.eval.ks)}")
        check(not (cfg.runtime.strategy == "tpu" and t.mixed_precision == "mixed_float16"),
              "train.mixed_precision", "TPUs compute in bfloat16: use mixed_bfloat16 (mixed_float16 needs loss "
              "scaling, which TPUs do not support)")


@dataclass(frozen=True)
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 100])
    # Baselines by name (tfrec.baseline_runs.BASELINES: popularity, bm25, content, id_sequence, id_two_tower); the
    # learned ones are trained with the model's batch size, epochs and early stopping, never more. A list naming
    # one the config cannot run (bm25 without query text, id_sequence without history-built queries,
    # id_two_tower without user ids) is refused; true = all that the data can run (the others skipped with a log
    # line), false = none. Left unset, the list of those that apply is chosen from the data (tfrec.config.resolve).
    baselines: Union[bool, list[str]] = True
    # Validation while training (and the baselines' early stopping) on a seeded sample of at most this many
    # queries, the same in every epoch and across restarts; null = every validation query.
    validation_max_queries: Optional[int] = 10000
    # eval.json's figures (the model's and every baseline's) on a seeded sample of at most this many test queries,
    # the same for all of them; null = every test query. At 25,000 the standard error of a recall is at most 0.0032.
    test_max_queries: Optional[int] = 25000
    exclude_seen: bool = False
    # A seeded share of the items made cold (no training or validation interaction), measured in eval.json's
    # cold_items section; null = off.
    cold_items_fraction: Optional[float] = None

    def validate(self, cfg) -> None:
        """Checks this section; raises ConfigError naming the key."""
        check(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "eval.ks", "needs positive cutoffs")
        if self.validation_max_queries is not None:
            check(self.validation_max_queries >= 1, "eval.validation_max_queries", "must be >= 1 or null")
        if self.test_max_queries is not None:
            check(self.test_max_queries >= 1, "eval.test_max_queries", "must be >= 1 or null")
        if self.cold_items_fraction is not None:
            check(0.0 < self.cold_items_fraction < 0.5, "eval.cold_items_fraction",
                  f"must be in (0, 0.5) or null, got {self.cold_items_fraction}")
            check(cfg.data.split.method != "files" and not cfg.data.interactions.streaming,
                  "eval.cold_items_fraction",
                  "holds items out of one interactions file; not available with data.split.method=files")


@dataclass(frozen=True)
class ExportConfig:
    enabled: bool = True
    model_name: str = "tfrec"
    k: int = 100
    index: Literal["brute_force", "ivf", "scann", "all"] = "brute_force"
    min_recall: float = 0.95
    # int8: brute_force and ivf keep int8 item codes with per-item scales instead of float32 embeddings
    # (about a quarter of the memory; served as <name>_int8 and <name>_ivf_int8). scann quantises already.
    quantization: Literal["none", "int8"] = "none"
    # retrieve (and retrieve_and_rank) leave the request's own history_item_ids out of their results, as
    # eval.exclude_seen leaves a user's seen items out of the ranking. auto = the run's eval.exclude_seen; false
    # for a shop where people buy the same things again. Only for history-built queries.
    exclude_history: Union[Literal["auto"], bool] = "auto"

    def validate(self, cfg) -> None:
        """Checks this section; raises ConfigError naming the key."""
        check(self.exclude_history is not True or cfg.data.interactions.query_history_items is not None,
              "export.exclude_history", "true needs history-built queries (data.interactions.query_history_items); "
              "a query of text only sends no history to leave out")
        check(valid_model_name(self.model_name), "export.model_name", f"{MODEL_NAME_RULE}; got {self.model_name!r}")
        check(self.k >= 1, "export.k", "must be >= 1")
        check(0.0 <= self.min_recall <= 1.0, "export.min_recall", "must be in [0, 1]")


@dataclass(frozen=True)
class RuntimeConfig:
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: Optional[str] = None

    def validate(self, cfg) -> None:
        """Nothing beyond the allowed values, which parse.py checks."""
