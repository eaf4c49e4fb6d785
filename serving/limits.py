"""Bounds on the work one request may cause, checked before any array is built.

A request names its own sizes: a JSON body by its list lengths, a gRPC TensorProto
by its declared shape (and a single value is broadcast to fill it). Both are
checked here against ``Limits`` while the request is still its wire form, so an
85-byte proto declaring ``[1, 2**21]`` strings or a JSON list of 1.3M ids is refused
in O(rows) time, not materialised, padded and compared. The same walk refuses
what TensorFlow would choke on later: strings that are not valid UTF-8 (a lone
surrogate such as ``"\\ud800"`` in JSON), NaN/Infinity where a number is expected,
a declared shape that does not match the number of values sent.

Every refusal is a ``RequestError`` (400 / INVALID_ARGUMENT) naming the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.signatures import RequestError, Signature

# The TensorProto field that carries the values of each dtype, and values per element.
_VALUE_FIELDS = {
    tf.float32: ("float_val", 1), tf.float64: ("double_val", 1), tf.int32: ("int_val", 1),
    tf.int16: ("int_val", 1), tf.int8: ("int_val", 1), tf.uint8: ("int_val", 1),
    tf.uint16: ("int_val", 1), tf.int64: ("int64_val", 1), tf.uint32: ("uint32_val", 1),
    tf.uint64: ("uint64_val", 1), tf.bool: ("bool_val", 1), tf.float16: ("half_val", 1),
    tf.bfloat16: ("half_val", 1), tf.complex64: ("scomplex_val", 2),
    tf.complex128: ("dcomplex_val", 2), tf.string: ("string_val", 1)}


@dataclass(frozen=True)
class Limits:
    """Per-request bounds (flags of ``python -m serving.server``).

    Args:
      max_batch_size: most rows (instances) in one request (``--max_batch_size``).
      max_exclusions: most ids in one row of ``exclude_item_ids`` (``--max_exclusions``).
      max_row_elements: most values in one row of any other input.
    """
    max_batch_size: int = 64
    max_exclusions: int = 1000
    max_row_elements: int = 4096

    def per_row(self, name: str, sig: Signature) -> tuple[int, str]:
        """(most values in one row of input ``name``, the flag that sets it)."""
        if name in sig.paddable:
            return self.max_exclusions, "--max_exclusions"
        return self.max_row_elements, "the per-row limit"


def too_many_rows(rows: int, limits: Limits, what: str = "instances") -> RequestError:
    return RequestError(f"{rows} {what} is over the maximum batch size {limits.max_batch_size} (--max_batch_size)")


def too_many_values(name: str, row: int, most: int, flag: str) -> RequestError:
    return RequestError(f"input '{name}', row {row}: more than {most} values; {flag} is {most}")


def bad_text(name: str, text: str) -> RequestError | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return RequestError(f"input '{name}': string is not valid UTF-8 text ({e.reason} "
                            f"{text[e.start:e.end].encode('unicode_escape').decode()!s} at position {e.start})")
    return None


# ----------------------------------------------------------------------------- REST (JSON)
def check_json_body(body: Any, sig: Signature, limits: Limits) -> None:
    """Checks a parsed REST predict body against ``limits`` before arrays are built.

    Row form: at most ``max_batch_size`` instances; per instance, each input's value
    within its per-row bound. Columnar form: the first level is the batch. Every string
    must be encodable as UTF-8. Malformed bodies are left for ``Signature.parse_json``.
    """
    if not isinstance(body, dict):
        return
    if isinstance(instances := body.get("instances"), list):
        if len(instances) > limits.max_batch_size:
            raise too_many_rows(len(instances), limits)
        only = sig.required[0] if len(sig.required) == 1 else "the input"
        for row, instance in enumerate(instances):
            items = (instance.items() if isinstance(instance, dict) and set(instance) != {"b64"}
                     else [(only, instance)])
            for name, value in items:
                _check_json_value(name, value, *limits.per_row(name, sig), row=row)
    elif "inputs" in body:
        inputs = body["inputs"]
        items = (inputs.items() if isinstance(inputs, dict) and set(inputs) != {"b64"}
                 else [(sig.required[0] if len(sig.required) == 1 else "the input", inputs)])
        for name, value in items:
            if isinstance(value, list) and len(value) > limits.max_batch_size and sig.batchable:
                raise too_many_rows(len(value), limits, f"rows of input '{name}'")
            rows = value if isinstance(value, list) and sig.batchable else [value]
            for row, part in enumerate(rows):
                _check_json_value(name, part, *limits.per_row(name, sig), row=row)
    if isinstance(signature := body.get("signature_name"), str) and (e := bad_text("signature_name", signature)):
        raise e


def _check_json_value(name: str, value: Any, most: int, flag: str, row: int) -> None:
    """Counts the values of one row of one input (refusing past ``most``) and checks its strings."""
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            count += len(v) if not v or not isinstance(v[0], list) else 0
            if len(v) > most or count > most:
                raise too_many_values(name, row, most, flag)
            stack.extend(v)
        elif isinstance(v, str):
            if (e := bad_text(name, v)) is not None:
                raise e
        elif isinstance(v, dict):
            for key, item in v.items():
                if isinstance(item, str) and (e := bad_text(name, item)) is not None:
                    raise e
                if isinstance(key, str) and (e := bad_text(name, key)) is not None:
                    raise e


def reject_json_constant(constant: str) -> None:
    """``json.loads(parse_constant=...)``: NaN and Infinity are not JSON numbers."""
    raise RequestError(f"JSON Parse error: {constant} is not a number (NaN and Infinity are not valid JSON)")


# ----------------------------------------------------------------------------- gRPC (TensorProto)
def check_tensor_proto(name: str, proto: tensor_pb2.TensorProto, sig: Signature, limits: Limits) -> None:
    """Checks one input's declared shape against the signature, ``limits`` and the values sent.

    Called before ``tf.make_ndarray``, which would fill the whole declared shape from a
    single value. The dtype must already match the signature's.
    """
    spec = sig.inputs[name]
    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"input '{name}': the TensorProto's shape has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise RequestError(f"input '{name}': declared shape {dims} has a negative dimension")
    want = spec.shape.as_list() if spec.shape.rank is not None else None
    if want is not None and (len(dims) != len(want) or any(w is not None and w != d for w, d in zip(want, dims))):
        pretty = ", ".join("?" if w is None else str(w) for w in want)
        raise RequestError(f"input '{name}' declares shape {dims}, expected [{pretty}]")
    batched = sig.batchable and len(dims) >= 1
    if batched and dims[0] > limits.max_batch_size:
        raise RequestError(f"input '{name}' declares {dims[0]} rows, over the maximum batch size "
                           f"{limits.max_batch_size} (--max_batch_size)")
    most, flag = limits.per_row(name, sig)
    per_row = math.prod(dims[1:] if batched else dims)
    if per_row > most:
        raise RequestError(f"input '{name}' declares shape {dims}: {per_row} values per row, more than "
                           f"{most}; {flag} is {most}")
    numel = math.prod(dims)
    dtype = tf.dtypes.as_dtype(proto.dtype)
    field, width = _VALUE_FIELDS.get(dtype, (None, 1))
    if proto.tensor_content:
        if dtype == tf.string:
            raise RequestError(f"input '{name}': string values must be sent in string_val")
        sent = len(proto.tensor_content) / dtype.size
        what = f"{len(proto.tensor_content)} bytes of tensor_content"
    elif field is None:
        raise RequestError(f"input '{name}': dtype {dtype.name} is not supported")
    else:
        sent = len(getattr(proto, field)) / width
        what = f"{sent:g} values"
    # A single value fills the whole (already bounded) shape, as in TensorFlow.
    if sent != numel and not (sent == 1 and numel > 0 and not proto.tensor_content):
        raise RequestError(f"input '{name}' declares shape {dims} ({numel} values) but {what} were sent")
    if dtype == tf.string and not name.endswith("_bytes") and not b"".join(proto.string_val).isascii():
        for i, value in enumerate(proto.string_val):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"input '{name}', value {i}: not valid UTF-8 ({e.reason} at byte "
                                   f"{e.start})") from None


def check_finite(arrays: dict[str, np.ndarray]) -> None:
    """Refuses NaN or infinite values in floating-point inputs."""
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and a.size and not np.all(np.isfinite(a)):
            raise RequestError(f"input '{name}' holds NaN or infinite values")
