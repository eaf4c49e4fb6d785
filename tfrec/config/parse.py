"""Typed config fields: coercing YAML and ``--set`` values, merging them into the tree, range checks.

The one place where a value meets its annotation: :func:`_coerce` checks types and
allowed values (``Literal[...]`` annotations), so a section declares a choice as
``index: Literal["brute_force", "ivf"] = "brute_force"`` and needs no check of its own.
Merging never mutates: it returns new frozen instances built with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from typing import Any

import yaml

from tfrec import fileio
from tfrec.errors import ConfigError, UserError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns the typed value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:  # True == 1, but bool is no choice of ints
            return value
        raise ConfigError(key, f"expected one of {', '.join(map(str, args))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # the first type that takes the value; the last one's error otherwise
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        return _coerce(key, value, inner[-1])
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


def merge(cfg: Any, overrides: dict, prefix: str = "") -> Any:
    """A copy of the frozen dataclass tree ``cfg`` with a nested dict merged in, keys and types checked."""
    if not isinstance(overrides, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"expected a mapping, got {overrides!r}")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("settable", True)}
    changes = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(dotted, f"unknown key; {hint}(known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, dotted + ".")
        else:
            changes[key] = _coerce(dotted, value, hints[key])
    return dataclasses.replace(cfg, **changes)


def dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    """{"a": {"b": 1, "c": [2]}} -> {"a.b", "a.c"}: the leaf keys a raw config mapping sets."""
    keys = set()
    for key, value in tree.items():
        keys |= dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return keys


def nest(dotted: dict[str, Any]) -> dict:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}."""
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "is a section; set its keys (section.key=value)")
        node[parts[-1]] = value
    return nested


def set_dotted(cfg: Any, assignment: str) -> Any:
    """A copy of ``cfg`` with one ``dotted.key=value`` (the value read as YAML) applied."""
    if "=" not in assignment:
        raise ConfigError(assignment, "--set expects dotted.key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # A plain string override of a str field must stay a string ("001" etc.).
    try:
        return merge(cfg, nest({key: value}))
    except ConfigError as first:
        if isinstance(value, str) or value is None:
            raise
        try:
            return merge(cfg, nest({key: raw}))
        except ConfigError:
            raise first from None  # the value as YAML read it explains more than the raw text


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
    path = fileio.location(path)  # a URL (a job dir's params.yaml on gs://) stays a string
    if not fileio.isfile(path):
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(fileio.read_text(path), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return data


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# The config keys holding a file or folder path (a local one may be relative).
PATH_KEYS = ("data.interactions.path", "data.items.path", "data.split.validation_path", "data.split.test_path",
             "model.query_encoder.checkpoint")


def absolute_paths(tree: dict, config_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Makes the local relative paths of a raw config mapping absolute, in place.

    Args:
      tree: a YAML mapping, or ``to_dict(cfg)``.
      config_file: the YAML ``tree`` came from: its relative paths resolve
        against its folder. None: against the current folder (``--set`` values).
    Returns:
      ``{dotted key: absolute path}`` for each path changed (URL-like paths,
      ``gs://``, ``pkg://``, ``synthetic://``..., are left as they are).
    """
    changed = {}
    for dotted in PATH_KEYS:
        *sections, leaf = dotted.split(".")
        node = tree
        for key in sections:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or "://" in value:
            continue
        value = os.path.expanduser(value)
        if config_file is not None and "://" in str(config_file):  # a YAML on gs://: its paths are beside it
            new = value if value.startswith("/") else str(config_file).rsplit("/", 1)[0] + "/" + value
        else:
            base = os.path.dirname(os.path.abspath(config_file)) if config_file is not None else os.getcwd()
            new = os.path.abspath(os.path.join(base, value))
        if new != node[leaf]:
            node[leaf] = changed[dotted] = new
    return changed


def model_name_from_file(config_file: str | os.PathLike) -> str:
    """``shop.yaml`` -> ``shop``: the export's model name for a user file without ``export.model_name``."""
    stem = re.sub(r"\.ya?ml$", "", str(config_file).rstrip("/").rsplit("/", 1)[-1])
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "tfrec"
