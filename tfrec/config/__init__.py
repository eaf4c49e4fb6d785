"""The one configuration tree, its presets and its override order.

Order, always the same: dataclass defaults -> preset YAML
(``tfrec/presets/<name>.yaml``; none for the data-agnostic base ``default``)
-> ``--config FILE.yaml`` -> each ``--set dotted.key=value`` in command-line
order -> the keys chosen from the config (:mod:`tfrec.config.resolve`) ->
:func:`validate`. The keys those steps name are the config's ``explicit``
ones; once the data is read, the data-dependent keys left open are chosen
from it (``resolve.for_data``), and the resolved tree is written to
``JOB_DIR/params.yaml``.

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
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfrec.config import resolve
from tfrec.config.data import DataConfig, InteractionsConfig, ItemsConfig, SplitConfig
from tfrec.config.model import ModelConfig, RankingConfig, RetrievalConfig, TextEncoderConfig
from tfrec.config.parse import (absolute_paths, dotted_keys, merge, model_name_from_file, nest, read_yaml,
                                set_dotted)
from tfrec.config.train import EvalConfig, ExportConfig, RuntimeConfig, TrainConfig
from tfrec.errors import ConfigError

log = logging.getLogger("tfrec")

__all__ = ["Config", "DataConfig", "InteractionsConfig", "ItemsConfig", "SplitConfig", "ModelConfig",
           "TextEncoderConfig", "RetrievalConfig", "RankingConfig", "TrainConfig", "EvalConfig", "ExportConfig",
           "RuntimeConfig", "build", "override", "updated", "validate", "list_presets", "read_yaml", "merge", "to_dict",
           "to_yaml", "from_dict", "config_hash", "config_keys", "PRESETS_DIR", "BASE", "default_preset", "resolve"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
BASE = "default"  # the data-agnostic base: the dataclass defaults, no preset file


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
    # The dotted keys a preset file, a --config file or a --set named (a section name covers its keys): the
    # data never changes them (tfrec.config.resolve). Not a key itself, not in params.yaml.
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False, metadata={"settable": False})


def list_presets() -> list[str]:
    """``default`` (the data-agnostic base) and the preset files' names."""
    return [BASE, *sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))]


def default_preset(config_file: str | None) -> str:
    """The preset a command without ``--preset`` starts from: the data-agnostic base under a user's
    ``--config``, the MovieLens demo with no arguments at all."""
    return BASE if config_file else "movielens"


def build(preset: str | None = None, config_file: str | None = None, sets: list[str] | None = None) -> Config:
    """Resolves a config in the fixed order and validates it.

    ``preset`` None is :func:`default_preset`. Relative file paths in
    ``config_file`` resolve against that file's folder, those of ``--set``
    against the current folder; the config holds them absolute
    (``params.yaml`` repeats from anywhere). Without its own
    ``export.model_name`` a user file names the export after itself
    (``shop.yaml`` -> ``export/shop/<version>``). The keys left open that the
    config alone decides (``data.split.method``) are chosen and logged.
    """
    preset = preset or default_preset(config_file)
    preset_path = PRESETS_DIR / f"{preset}.yaml"
    if preset != BASE and not preset_path.is_file():
        raise ConfigError("preset", f"unknown preset '{preset}' (known: {', '.join(list_presets())})")
    cfg = Config(name=preset)
    if preset != BASE:
        cfg = _explicitly(merge(cfg, read_yaml(preset_path)), dotted_keys(read_yaml(preset_path)))
    if config_file:
        user = read_yaml(config_file)
        absolute_paths(user, config_file)
        user_data = user.get("data") if isinstance(user.get("data"), dict) else {}
        # A file naming its own interactions or items describes a different data
        # set: the preset's column names and formats for that section do not
        # carry over (so a YAML of data keys alone is enough), a user's query
        # column replaces the preset's history-built query, and what the preset
        # chose for its own data (negatives, baselines, split, ...) is chosen
        # again from this data unless the user's file names it.
        fresh = {section: default() for section, default in (("interactions", InteractionsConfig),
                                                             ("items", ItemsConfig))
                 if isinstance(user_data.get(section), dict) and "path" in user_data[section]}
        cfg = _other_data(cfg, fresh)
        cfg = _explicitly(merge(cfg, user), dotted_keys(user))
        if not (isinstance(user.get("export"), dict) and "model_name" in user["export"]):
            cfg = updated(cfg, {"export.model_name": model_name_from_file(config_file)})
    cfg = _with_sets(cfg, sets or [])
    cfg, choices = resolve.resolve_config(updated(cfg, absolute_paths(to_dict(cfg))))
    for line in choices:
        log.info("config: %s", line)
    return validate(cfg)


def _other_data(cfg: Config, fresh: dict) -> Config:
    """``cfg`` with the data sections in ``fresh`` replaced; with new interactions, the keys a preset chose
    for its own data (``resolve.RESOLVED_KEYS``) go back to the base's values, open to the new data."""
    released = set(resolve.RESOLVED_KEYS) if "interactions" in fresh else set()
    base = merge(cfg, nest({key: resolve.get(Config(), key) for key in released}))
    return dataclasses.replace(base, data=dataclasses.replace(base.data, **fresh), explicit=frozenset(
        k for k in cfg.explicit if k not in released and not any(k.startswith(f"data.{s}.") for s in fresh)))


def override(cfg: Config, sets: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``dotted.key=value`` overrides applied (as ``--set`` does)."""
    return validate(_with_sets(cfg, sets))


def _with_sets(cfg: Config, sets: list[str]) -> Config:
    for assignment in sets:
        cfg = _explicitly(set_dotted(cfg, assignment), {assignment.split("=", 1)[0].strip()})
    return cfg


def _explicitly(cfg: Config, keys: set[str]) -> Config:
    return dataclasses.replace(cfg, explicit=cfg.explicit | frozenset(keys))


def updated(cfg: Config, changes: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"dotted.key": value}`` applied (and explicit), types checked, not validated
    (for code and tests that assemble a config step by step)."""
    return _explicitly(merge(cfg, nest(changes)), set(changes))


def validate(cfg: Config) -> Config:
    """Checks ranges and combinations, section by section, then what the config assumes of the data
    (:func:`tfrec.config.resolve.refusals`); raises ConfigError naming the key."""
    for section in (cfg.data, cfg.model, cfg.retrieval, cfg.ranking, cfg.train, cfg.eval, cfg.export,
                    cfg.runtime):
        section.validate(cfg)
    resolve.refusals(cfg)
    return cfg


# ------------------------------------------------------------------ output
def to_dict(cfg: Config) -> dict:
    """The config tree as plain dicts and lists (what ``params.yaml`` holds); ``explicit`` is left out."""
    tree = dataclasses.asdict(cfg)
    del tree["explicit"]
    return tree


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
    """The config ``data`` (a ``params.yaml`` mapping) describes; every key it holds is explicit."""
    return _explicitly(merge(Config(), data), dotted_keys(data))
