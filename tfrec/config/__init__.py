"""The one configuration tree, its presets and its override order.

Order, always the same: dataclass defaults -> preset YAML
(``tfrec/presets/<name>.yaml``) -> ``--config FILE.yaml`` -> each
``--set dotted.key=value`` in command-line order -> :func:`validate`.
The resolved tree is written to ``JOB_DIR/params.yaml``.

Each section is a frozen dataclass in its own module, with a ``validate(cfg)`` method
for its ranges and for the rules that span sections (``cfg`` is the whole tree):
:mod:`tfrec.config.data`, :mod:`tfrec.config.model` (model, retrieval, ranking),
:mod:`tfrec.config.train` (train, eval, export, runtime). :mod:`tfrec.config.parse`
coerces and merges values, and is the one place that checks types and allowed values.
Overrides never mutate a config: each step returns a new tree (``dataclasses.replace``).

Adding a key is one line in its section: ``name: type = default``. A key with a fixed
set of values is annotated ``Literal[...]`` and needs nothing else, e.g.
``history_encoder: Literal["mean", "gru", "transformer"] = "mean"``; YAML, ``--set``,
``--print-config`` and the unknown-key hint pick it up from the annotation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from typing import Any

from tfrec.config.data import DataConfig, InteractionsConfig, ItemsConfig, SplitConfig
from tfrec.config.model import ModelConfig, RankingConfig, RetrievalConfig, TextEncoderConfig
from tfrec.config.parse import absolute_paths, merge, model_name_from_file, nest, read_yaml, set_dotted
from tfrec.config.train import EvalConfig, ExportConfig, RuntimeConfig, TrainConfig
from tfrec.errors import ConfigError

__all__ = ["Config", "DataConfig", "InteractionsConfig", "ItemsConfig", "SplitConfig", "ModelConfig",
           "TextEncoderConfig", "RetrievalConfig", "RankingConfig", "TrainConfig", "EvalConfig", "ExportConfig",
           "RuntimeConfig", "build", "override", "updated", "validate", "list_presets", "read_yaml", "merge", "to_dict",
           "to_yaml", "from_dict", "config_hash", "config_keys", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
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
    """Resolves a config in the fixed order and validates it.

    Relative file paths in ``config_file`` resolve against that file's folder,
    those of ``--set`` against the current folder; the config holds them
    absolute (``params.yaml`` repeats from anywhere). Without its own
    ``export.model_name`` a user file names the export after itself
    (``shop.yaml`` -> ``export/shop/<version>``).
    """
    preset_path = PRESETS_DIR / f"{preset}.yaml"
    if not preset_path.is_file():
        raise ConfigError("preset", f"unknown preset '{preset}' (known: {', '.join(list_presets())})")
    cfg = dataclasses.replace(merge(Config(), read_yaml(preset_path)), name=preset)
    if config_file:
        user = read_yaml(config_file)
        absolute_paths(user, config_file)
        user_data = user.get("data") if isinstance(user.get("data"), dict) else {}
        # A file naming its own interactions or items describes a different data
        # set: the preset's column names and formats for that section do not
        # carry over (so a YAML of data keys alone is enough), and a user's query
        # column replaces the preset's history-built query.
        fresh = {section: default() for section, default in (("interactions", InteractionsConfig),
                                                             ("items", ItemsConfig))
                 if isinstance(user_data.get(section), dict) and "path" in user_data[section]}
        cfg = merge(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **fresh)), user)
        if not (isinstance(user.get("export"), dict) and "model_name" in user["export"]):
            cfg = updated(cfg, {"export.model_name": model_name_from_file(config_file)})
    for assignment in sets or []:
        cfg = set_dotted(cfg, assignment)
    return validate(updated(cfg, absolute_paths(to_dict(cfg))))


def override(cfg: Config, sets: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``dotted.key=value`` overrides applied (as ``--set`` does)."""
    for assignment in sets:
        cfg = set_dotted(cfg, assignment)
    return validate(cfg)


def updated(cfg: Config, changes: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"dotted.key": value}`` applied, types checked, not validated
    (for code and tests that assemble a config step by step)."""
    return merge(cfg, nest(changes))


def validate(cfg: Config) -> Config:
    """Checks ranges and combinations, section by section; raises ConfigError naming the key."""
    for section in (cfg.data, cfg.model, cfg.retrieval, cfg.ranking, cfg.train, cfg.eval, cfg.export,
                    cfg.runtime):
        section.validate(cfg)
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


def config_keys() -> list[str]:
    """Every settable dotted key (``train.epochs``, ``data.items.path``, ...), in tree order."""
    def walk(node: dict, prefix: str) -> list[str]:
        return [k for key, value in node.items()
                for k in (walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]

    return [k for k in walk(to_dict(Config()), "") if k != "name"]


def from_dict(data: dict) -> Config:
    return merge(Config(), data)
