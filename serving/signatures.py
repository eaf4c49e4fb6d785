"""One SavedModel signature as the server sees it: validation and tensor conversion.

``Signature`` wraps a loaded concrete function and checks requests against its
input specs (names, dtypes, ranks, fixed dimensions, a common batch dimension)
before anything reaches TensorFlow, so a malformed request is a ``RequestError``
(HTTP 400 / gRPC INVALID_ARGUMENT) rather than a failure inside the graph. The
JSON forms are TF Serving's REST predict API:

- row:      ``{"instances": [{"query_text": "a"}, ...]}`` -> ``{"predictions": [...]}``
- columnar: ``{"inputs": {"query_text": ["a"]}}``        -> ``{"outputs": {...}}``

A bare value (``"instances": ["a", "b"]`` / ``"inputs": ["a", "b"]``) feeds the
signature's only required input. Inputs in ``OPTIONAL_INPUTS`` may be left out
(they are fed as ``[batch, 0]``), and in the row form their per-instance lists
may have different lengths: they are padded (``""`` / 0) to a common width, as
are the per-instance history lists (``RAGGED_INPUTS``). Other inputs that have
a default in the SignatureDef may be left out as in TF Serving: their default
value is fed.
"""

from __future__ import annotations

import base64
from typing import Any

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"
# Inputs a caller may omit; fed as an empty [batch, 0] tensor, padded with ""/0.
OPTIONAL_INPUTS = frozenset({"exclude_item_ids"})
# Per-user lists whose rows may differ in length in the row form: padded with ""/0 to the longest (at least 1,
# so an all-empty history is one "" item: no history). A "" history item is padding, so its label is never read.
RAGGED_INPUTS = frozenset({"history_item_ids", "history_labels"})


class RequestError(Exception):
    """A request the server answers with an error; ``code`` is a gRPC status name."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.message, self.code = message, code


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened (for logs and error bodies)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_leaf(value: Any, dtype: tf.DType) -> Any:
    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise RequestError("Unable to base64 decode") from None
    elif dtype == tf.bool:
        if isinstance(value, bool):
            return value
    elif dtype.is_integer:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif dtype.is_floating:
        if _is_number(value):
            return value
    raise RequestError(f"JSON Value: {_short(value)} Type: {_json_type(value)} "
                       f"is not of expected type: {dtype.name}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    return {str: "String", int: "Number", float: "Number", dict: "Object", list: "Array",
            type(None): "Null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_to_array(value: Any, dtype: tf.DType, name: str) -> np.ndarray:
    """Converts a (nested-list) JSON value into a dense array of ``dtype``.

    Raises:
      RequestError: ragged lists, wrong leaf types.
    """
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    if len(shape) > 32:
        raise RequestError(f"input '{name}': lists nested deeper than 32 levels")
    flat: list[Any] = []

    def walk(v: Any, level: int) -> None:
        if isinstance(v, list):
            if level >= len(shape) or len(v) != shape[level]:
                raise RequestError(f"input '{name}': ragged or mis-nested list at level {level}, "
                                   f"expected a dense tensor of shape {shape}")
            for x in v:
                walk(x, level + 1)
        elif level != len(shape):
            raise RequestError(f"input '{name}': JSON value {_short(v)} found at level {level}, "
                               f"expected at level {len(shape)}")
        else:
            flat.append(_json_leaf(v, dtype))

    try:
        walk(value, 0)
    except RequestError as e:
        if e.message.startswith("input '"):
            raise
        raise RequestError(f"input '{name}': {e.message}") from None
    if dtype == tf.string:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    try:
        return np.asarray(flat, dtype=dtype.as_numpy_dtype).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise RequestError(f"input '{name}': {e} for dtype {dtype.name}") from None


def array_to_json(arr: np.ndarray, name: str) -> Any:
    """A numpy output as TF Serving writes it: shortest float repr, ``*_bytes`` as b64."""
    if arr.dtype == object:
        if name.endswith("_bytes"):
            flat = [{"b64": base64.b64encode(x).decode("ascii")} for x in arr.ravel()]
        else:
            flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                    for x in arr.ravel()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    if arr.dtype in (np.float32, np.float16):
        return np.array([float(s) for s in arr.ravel().astype(str)]).reshape(arr.shape).tolist()
    return arr.tolist()


def pad_to(arr: np.ndarray, width: int) -> np.ndarray:
    """Pads a [rows, e] array along axis 1 to ``width`` with "" (strings) or 0."""
    if arr.shape[1] == width:
        return arr
    out = np.full((arr.shape[0], width), b"" if arr.dtype == object else 0, dtype=arr.dtype)
    out[:, :arr.shape[1]] = arr
    return out


class Signature:
    """A loaded signature: ``inputs``/``outputs`` specs and a call on numpy arrays.

    Args:
      name: the signature key, e.g. ``serving_default``.
      fn: the concrete function (``loaded.signatures[name]``).
      defaults: the SignatureDef's default values of inputs (``tf.make_ndarray``'d).
    """

    def __init__(self, name: str, fn: Any, defaults: dict[str, np.ndarray] | None = None):
        self.name, self.fn = name, fn
        self.inputs: dict[str, tf.TensorSpec] = dict(fn.structured_input_signature[1])
        self.outputs: dict[str, tf.TensorSpec] = {
            k: tf.TensorSpec(v.shape, v.dtype) for k, v in fn.structured_outputs.items()}
        # Omitted paddable inputs are fed as [batch, 0]; other defaulted ones get their default.
        self.paddable = frozenset(n for n, s in self.inputs.items()
                                  if n in OPTIONAL_INPUTS and s.shape.rank == 2)
        self.defaults = {n: v for n, v in (defaults or {}).items()
                         if n in self.inputs and n not in self.paddable}
        self.optional = self.paddable | set(self.defaults)
        self.required = [n for n in self.inputs if n not in self.optional]
        specs = list(self.inputs.values()) + list(self.outputs.values())
        # Batchable: every input and output has a leading dynamic batch dimension.
        # A defaulted (non-paddable) input may be a per-request parameter: never merge those.
        self.batchable = bool(self.inputs) and not self.defaults and all(
            s.shape.rank is not None and s.shape.rank >= 1 and s.shape[0] is None for s in specs)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {n: tf.constant(a, dtype=self.inputs[n].dtype) for n, a in arrays.items()}
        for n in self.defaults.keys() - feed.keys():
            feed[n] = tf.constant(self.defaults[n], dtype=self.inputs[n].dtype)
        return {n: t.numpy() for n, t in self.fn(**feed).items()}

    def _check_names(self, names: set[str]) -> None:
        extra = sorted(names - set(self.inputs))
        missing = sorted(set(self.required) - names)
        if extra or missing:
            raise RequestError(
                f"input names do not match signature '{self.name}': sent extra: "
                f"{{{','.join(extra)}}}, missing but required: {{{','.join(missing)}}}; "
                f"inputs are {{{','.join(sorted(self.inputs))}}}")

    def _check_shape(self, name: str, arr: np.ndarray, batched: bool = True) -> None:
        shape = self.inputs[name].shape
        if shape.rank is None:
            return
        want = shape.as_list() if batched else shape.as_list()[1:]
        got = list(arr.shape)
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            pretty = ", ".join("batch" if w is None and i == 0 and batched else
                               ("?" if w is None else str(w)) for i, w in enumerate(want))
            raise RequestError(f"input '{name}' has shape {got}"
                               f"{' per instance' if not batched else ''}, expected [{pretty}]")

    def complete(self, arrays: dict[str, np.ndarray], max_rows: int | None = None
                 ) -> tuple[dict[str, np.ndarray], int]:
        """Validates whole-batch arrays, feeds omitted optional inputs; returns (arrays, rows)."""
        self._check_names(set(arrays))
        for n, a in arrays.items():
            if a.dtype != self.inputs[n].dtype.as_numpy_dtype and not (
                    a.dtype == object and self.inputs[n].dtype == tf.string):
                raise RequestError(f"input '{n}' has dtype {tf.as_dtype(a.dtype).name}"
                                   f" but the signature expects {self.inputs[n].dtype.name}")
            self._check_shape(n, a)
        rows = {a.shape[0] for a in arrays.values() if a.ndim > 0}
        if self.batchable and len(rows) > 1:
            raise RequestError(f"inputs have different batch sizes: {sorted(rows)}")
        n_rows = rows.pop() if rows else 1
        if self.batchable and n_rows == 0:
            raise RequestError("the request has no instances (batch size 0)")
        if max_rows is not None and self.batchable and n_rows > max_rows:
            raise RequestError(f"Task size {n_rows} is larger than maximum input batch size "
                               f"{max_rows}")
        for n in self.paddable - set(arrays):
            arrays[n] = np.empty((n_rows, 0), dtype=self.inputs[n].dtype.as_numpy_dtype)
        return arrays, n_rows

    def parse_json(self, body: Any, max_rows: int | None = None
                   ) -> tuple[dict[str, np.ndarray], int, str]:
        """A REST predict body -> (arrays, rows, "row" | "columnar")."""
        if not isinstance(body, dict):
            raise RequestError("JSON Value: request body is not an object")
        if ("instances" in body) == ("inputs" in body):
            raise RequestError("expecting exactly one of 'instances' (row format) or "
                               "'inputs' (columnar format)")
        if "inputs" in body:
            value = body["inputs"]
            if isinstance(value, dict) and set(value) != {"b64"}:
                self._check_names(set(value))
                arrays = {n: json_to_array(v, self.inputs[n].dtype, n) for n, v in value.items()}
            else:
                arrays = {self._only_required(): json_to_array(
                    value, self.inputs[self._only_required()].dtype, self._only_required())}
            return (*self.complete(arrays, max_rows), "columnar")
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError("'instances' must be a non-empty list")
        if max_rows is not None and len(instances) > max_rows:
            raise RequestError(f"Task size {len(instances)} is larger than maximum input batch "
                               f"size {max_rows}")
        objects = [isinstance(i, dict) and set(i) != {"b64"} for i in instances]
        if any(objects) and not all(objects):
            raise RequestError("'instances' mixes objects and plain values")
        if not objects[0]:
            instances = [{self._only_required(): i} for i in instances]
        given = self.required + [n for n in self.defaults if n in instances[0]]
        columns: dict[str, list[np.ndarray]] = {n: [] for n in given}
        for row, instance in enumerate(instances):
            try:
                self._check_names(set(instance))
                if set(instance) - self.paddable != set(given):
                    raise RequestError(f"give the inputs {{{','.join(sorted(self.defaults))}}} "
                                       f"in every instance or in none")
            except RequestError as e:
                raise RequestError(f"instance {row}: {e.message}") from None
            for n in given:
                arr = json_to_array(instance[n], self.inputs[n].dtype, n)
                self._check_shape(n, arr, batched=False)
                columns[n].append(arr)
        arrays = {}
        for n, parts in columns.items():
            if n in RAGGED_INPUTS and all(p.ndim == 1 for p in parts):
                width = max(1, max(p.shape[0] for p in parts))
                parts = [pad_to(p[None, :], width)[0] for p in parts]
            if len({p.shape for p in parts}) > 1:
                raise RequestError(f"input '{n}': instances have different shapes "
                                   f"{sorted({p.shape for p in parts})}")
            arrays[n] = np.stack(parts)
        for n in self.paddable:  # may be left out of some rows; rows are padded to one width
            if any(n in i for i in instances):
                dtype = self.inputs[n].dtype
                parts = [json_to_array(i[n], dtype, n) if n in i
                         else np.empty(0, dtype=dtype.as_numpy_dtype) for i in instances]
                for p in parts:
                    self._check_shape(n, p, batched=False)
                width = max(p.shape[0] for p in parts)
                arrays[n] = np.stack([pad_to(p[None, :], width)[0] for p in parts])
        return (*self.complete(arrays, max_rows), "row")

    def _only_required(self) -> str:
        if len(self.required) != 1:
            raise RequestError(f"a plain value/list was sent, but signature '{self.name}' needs "
                               f"an object with the inputs {{{','.join(sorted(self.inputs))}}}")
        return self.required[0]


def json_response(outputs: dict[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """Outputs -> ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    values = {n: array_to_json(a, n) for n, a in sorted(outputs.items())}
    if fmt == "columnar":
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = {n: len(v) if isinstance(v, list) else None for n, v in values.items()}
    if len(set(rows.values())) > 1 or None in rows.values():
        raise RequestError(f"outputs have inconsistent batch sizes {rows}: use the columnar "
                           f"'inputs' form for this signature")
    return {"predictions": [{n: v[i] for n, v in values.items()} for i in range(rows.popitem()[1])]}
