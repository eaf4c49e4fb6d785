"""What a server serves, as the client sees it: models and signatures from the model metadata.

TF Serving answers ``GET /v1/models/NAME[/versions/V]/metadata`` (REST) and
``PredictionService.GetModelMetadata`` with ``metadata_field: "signature_def"`` (gRPC) with a
``SignatureDefMap``; REST sends it as JSON::

    {"model_spec": {"name": "movielens", "signature_name": "", "version": "1"},
     "metadata": {"signature_def": {"signature_def": {
         "serving_default": {"inputs": {"query_text": {"dtype": "DT_STRING", "name": "...",
                                                       "tensor_shape": {"dim": [{"size": "-1"}]}}},
                             "outputs": {...}, "method_name": "tensorflow/serving/predict"}}}}}

gRPC's map, turned into a dict with ``json_format.MessageToDict``, has the same shape. TF Serving has
no call that lists its models (tensorflow/serving#795), so the candidate names come from the
``models.config`` the server was started with; each is then asked for its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfrec.export import layout

# {signature: {"inputs": {tensor: (dtype, shape)}, "outputs": {...}}}; dtype as TF names it ("string",
# "float32"...); shape: a list of ints with None for an unknown size, or None for an unknown rank.
Signatures = dict[str, dict[str, dict[str, tuple[str, list[int | None] | None]]]]


# DataType enum names whose TF dtype name differs (DT_INT64 -> int64 etc. follow the rule)
_DTYPE_NAMES = {"float": "float32", "double": "float64", "half": "float16"}


def describe_signatures(signature_def: dict[str, Any]) -> Signatures:
    """The inputs and outputs of every callable signature of a ``SignatureDefMap.signature_def`` dict
    (``__saved_model_init_op`` and other ``__`` entries are the SavedModel's own, not for requests)."""
    out: Signatures = {}
    for name, sig in signature_def.items():
        if name.startswith("__"):
            continue
        out[name] = {part: {tensor: _describe_tensor(info) for tensor, info in sig.get(part, {}).items()}
                     for part in ("inputs", "outputs")}
    return out


def _describe_tensor(info: dict[str, Any]) -> tuple[str, list[int | None] | None]:
    dtype = str(info.get("dtype", "DT_INVALID")).removeprefix("DT_").lower()
    dtype = _DTYPE_NAMES.get(dtype, dtype)
    shape = info.get("tensor_shape", {})
    if shape.get("unknown_rank") or shape.get("unknownRank"):
        return dtype, None
    sizes = [int(d.get("size", -1)) for d in shape.get("dim", [])]
    return dtype, [s if s >= 0 else None for s in sizes]


def format_signature(name: str, sig: dict[str, dict[str, tuple[str, list | None]]]) -> str:
    """One line: ``name: query_text string [?] -> item_ids string [?, 10], scores float [?, 10]``."""
    def tensors(part: str) -> str:
        return ", ".join(f"{t} {dtype} {_shape(shape)}" for t, (dtype, shape) in sorted(sig[part].items()))

    return f"{name}: {tensors('inputs') or '(no inputs)'} -> {tensors('outputs')}"


def _shape(shape: list[int | None] | None) -> str:
    return "[*]" if shape is None else "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def listing(client, error_type: type[Exception]) -> tuple[list[str], int]:
    """``python -m serving.client --list``: for each of the client's ``known_models`` (else its model), a line
    with its served version and one line per signature, or why it is not served; and how many are served.

    Args:
      client: a ``serving.client`` RestClient or GrpcClient.
      error_type: ``serving.client.ServingError`` (what the client raises).
    """
    lines, served = [], 0
    for name in client.known_models or [client.model_name]:
        try:
            version, signature_def = client._signature_def(name)
        except error_type as e:
            if not is_not_found(e.code):
                raise
            lines.append(f"{name}: not served ({e.message})")
            continue
        served += 1
        signatures = describe_signatures(signature_def)
        lines.append(f"{name}: version {version}")
        lines += [f"  {format_signature(n, signatures[n])}" for n in sorted(signatures)]
    return lines, served


def config_model_names(path: str | Path) -> list[str]:
    """The model names of a ``models.config`` (text-format ModelServerConfig), in file order."""
    return list(layout.read_models_config(path))


def is_not_found(code: int | str) -> bool:
    """The status a server gives for a model (or version) it does not serve: HTTP 404, gRPC NOT_FOUND."""
    return code in (404, "NOT_FOUND")
