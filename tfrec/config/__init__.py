"""The one configuration tree, its presets and its override order.

Order, always the same: dataclass defaults -> preset YAML
(``tfrec/presets/<name>.yaml``) -> ``--config FILE.yaml`` -> each
``--set dotted.key=value`` in command-line order -> :func:`validate`.
The resolved tree is written to ``JOB_DIR/params.yaml``.

Each section lives in its own module with its validator: :mod:`tfrec.config.data`,
:mod:`tfrec.config.model` (model, retrieval, ranking), :mod:`tfrec.config.train`
(train, eval, export, runtime); :mod:`tfrec.config.parse` coerces and merges values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tfrec.config.data import DataConfig, InteractionsConfig, ItemsConfig, SplitConfig, validate_data
from tfrec.config.model import (ModelConfig, RankingConfig, RetrievalConfig, TextEncoderConfig, validate_model,
                                validate_tasks)
from tfrec.config.parse import merge, read_yaml, set_dotted
from tfrec.config.train import (EvalConfig, ExportConfig, RuntimeConfig, TrainConfig, validate_train)
from tfrec.errors import ConfigError

__all__ = ["Config", "DataConfig", "InteractionsConfig", "ItemsConfig", "SplitConfig", "ModelConfig",
           "TextEncoderConfig", "RetrievalConfig", "RankingConfig", "TrainConfig", "EvalConfig", "ExportConfig",
           "RuntimeConfig", "build", "override", "validate", "list_presets", "read_yaml", "merge", "to_dict",
           "to_yaml", "from_dict", "config_hash", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


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
        set_dotted(cfg, assignment)
    validate(cfg)
    return cfg


def override(cfg: Config, sets: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``dotted.key=value`` overrides applied (as ``--set`` does)."""
    new = from_dict(to_dict(cfg))
    for assignment in sets:
        set_dotted(new, assignment)
    return validate(new)


def validate(cfg: Config) -> Config:
    """Checks ranges and combinations, section by section; raises ConfigError naming the key."""
    validate_data(cfg)
    validate_model(cfg)
    validate_tasks(cfg)
    validate_train(cfg)
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
