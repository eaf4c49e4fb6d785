"""A fast path for the REST bodies retrieval clients send: text queries and lists of excluded ids.

``Signature.parse_json`` converts any TF Serving JSON body, one value at a time; for
``64 rows x 1000 exclude_item_ids`` that is ~200 ms of Python holding the GIL, during which
every other request waits. ``decode_common`` handles the two common shapes directly:

- row:      ``{"instances": [{"query_text": "a", "exclude_item_ids": ["x", ...]}, ...]}``
- columnar: ``{"inputs": {"query_text": ["a", ...], "exclude_item_ids": [["x", ...], ...]}}``

where every required input is a ``[batch]`` string and the optional ones are the paddable
``[batch, e]`` strings; values must be plain JSON strings. It checks ``Limits`` before it builds
anything, and gives the same arrays as ``parse_json`` (rows of exclusions padded with ``""``).
Any other body returns None and goes the general way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from serving.limits import Limits, bad_text, too_many_rows, too_many_values
from serving.signatures import Signature

Decoded = tuple[dict[str, np.ndarray], int, str]  # arrays, rows, "row" | "columnar"


def decode_common(body: Any, sig: Signature, limits: Limits) -> Decoded | None:
    """(arrays, rows, form) for a body of the shapes above; None for any other body."""
    if type(body) is not dict or not sig.batchable:
        return None
    texts = {n for n in sig.required if sig.inputs[n].dtype == tf.string and sig.inputs[n].shape.rank == 1}
    lists = {n for n in sig.paddable if sig.inputs[n].dtype == tf.string}
    if set(sig.required) != texts:
        return None
    if set(body) <= {"instances", "signature_name"} and type(body.get("instances")) is list:
        return _rows(body["instances"], sig, limits, texts, lists)
    if set(body) <= {"inputs", "signature_name"} and type(body.get("inputs")) is dict:
        return _columns(body["inputs"], sig, limits, texts, lists)
    return None


def _rows(instances: list, sig: Signature, limits: Limits, texts: set[str], lists: set[str]) -> Decoded | None:
    if not instances:
        return None
    if len(instances) > limits.max_batch_size:
        raise too_many_rows(len(instances), limits)
    allowed = texts | lists
    for instance in instances:
        if type(instance) is not dict or not texts <= instance.keys() <= allowed:
            return None
    columns: dict[str, np.ndarray] = {}
    for n in texts:
        values = [instance[n] for instance in instances]
        if not all(type(v) is str for v in values):
            return None
        columns[n] = _strings(values, n)
    for n in lists:
        if not any(n in instance for instance in instances):
            continue  # fed as [rows, 0] by Signature.complete
        rows = [instance.get(n, []) for instance in instances]
        if not _string_rows(n, rows, sig, limits):
            return None
        columns[n] = _padded(rows, n)
    return (*sig.complete(columns, limits.max_batch_size), "row")


def _string_rows(name: str, rows: list, sig: Signature, limits: Limits) -> bool:
    """True when ``rows`` are lists of strings; a row over its limit is refused by name (checked first)."""
    most, flag = limits.per_row(name, sig)
    for i, row in enumerate(rows):
        if type(row) is not list:
            return False
        if len(row) > most:
            raise too_many_values(name, i, most, flag)
    return all(type(v) is str for row in rows for v in row)


def _columns(inputs: dict, sig: Signature, limits: Limits, texts: set[str], lists: set[str]) -> Decoded | None:
    if not texts <= inputs.keys() <= texts | lists:
        return None
    columns: dict[str, np.ndarray] = {}
    for n, value in inputs.items():
        if type(value) is not list or not value:
            return None
        if len(value) > limits.max_batch_size:
            raise too_many_rows(len(value), limits, f"rows of input '{n}'")
        if n in texts:
            if not all(type(v) is str for v in value):
                return None
            columns[n] = _strings(value, n)
            continue
        if not _string_rows(n, value, sig, limits) or len({len(row) for row in value}) > 1:
            return None  # ragged or not strings: parse_json names the problem
        columns[n] = _padded(value, n)
    return (*sig.complete(columns, limits.max_batch_size), "columnar")


def _encode(values: list[str], name: str) -> list[bytes]:
    try:
        return [v.encode("utf-8") for v in values]
    except UnicodeEncodeError:
        raise next(e for v in values if (e := bad_text(name, v)) is not None) from None


def _strings(values: list[str], name: str) -> np.ndarray:
    """[rows] object array of UTF-8 bytes."""
    out = np.empty(len(values), dtype=object)
    out[:] = _encode(values, name)
    return out


def _padded(rows: list[list[str]], name: str) -> np.ndarray:
    """[rows, widest] object array of UTF-8 bytes, short rows padded with b""."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), b"", dtype=object)
    for i, row in enumerate(rows):
        if row:
            out[i, :len(row)] = _encode(row, name)
    return out

