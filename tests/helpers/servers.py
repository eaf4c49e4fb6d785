"""Running servers in tests: an in-process ModelServer, plain HTTP calls, PredictRequests, metrics."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

MAX_BATCH, MAX_BYTES = 8, 64 << 10  # the limits of the test servers (small, so that tests reach them)


@contextmanager
def running_server(base_paths: dict[str, str], **kwargs: Any) -> Iterator[Any]:
    """An in-process ModelServer on free 127.0.0.1 ports, stopped afterwards."""
    from serving.server import ModelServer

    server = ModelServer(base_paths, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=5)


def http(port: int, path: str, body: Any = None, method: str | None = None,
         raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one plain-urllib request to 127.0.0.1:port."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def predict_request(queries, exclude=None, name="tiny", signature="", **extra_inputs):
    """A PredictRequest of query_text [b] (and exclude_item_ids [b, e], other inputs) for the tiny model."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["query_text"].CopyFrom(tf.make_tensor_proto(queries, dtype=tf.string))
    if exclude is not None:
        request.inputs["exclude_item_ids"].CopyFrom(tf.make_tensor_proto(exclude, dtype=tf.string))
    for n, v in extra_inputs.items():
        request.inputs[n].CopyFrom(tf.make_tensor_proto(v))
    return request


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus series ``name{labels}`` in exposition ``text`` (any label order)."""
    for m in re.finditer(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None
