"""What bench/load.py's scenarios share: the server child process, REST and gRPC callers that check answers, RSS.

A caller sends one retrieve request (``query``, ``exclude`` ids for each of its rows) and returns
``(kind, version, detail)``: kind "ok" for a valid answer (k ids per row, none excluded, scores
sorted), else the error kind (``http_400``, ``grpc_INVALID_ARGUMENT``, ``refused_503``...).
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import serving  # noqa: E402,F401  (tfrec's environment before tensorflow)
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from serving.client import RestClient, ServingError  # noqa: E402
from tests.helpers.spawn import spawn_server  # noqa: E402

QUERIES = [f"query {i} space opera heist romance" for i in range(32)]


@dataclass
class Record:
    """One request: api, monotonic start/end, outcome kind ("ok" or an error kind), version."""
    api: str
    t0: float
    t1: float
    kind: str
    version: int | None = None


def is_refusal(kind: str) -> bool:
    """A clean refusal: connection refused, REST 503 "shutting down", gRPC UNAVAILABLE.

    gRPC CANCELLED also counts when it comes after SIGTERM (see ``analyse``): a call
    that reaches the server after it began stopping is cancelled by gRPC, not run.
    """
    return kind.startswith("refused") or kind == "grpc_CANCELLED"


def start_server(base: Path, model: str, poll_s: float = 0.5, flags: tuple[str, ...] = ()
                 ) -> tuple[subprocess.Popen, int, int, list[str]]:
    """The server on ports it picks itself: (proc, rest, grpc, log lines)."""
    return spawn_server(["--model_base_path", str(base), "--model_name", model, "--port", "0", "--rest_api_port",
                         "0", "--file_system_poll_wait_seconds", str(poll_s), *flags])


def rss_mb(pid: int) -> float | None:
    """The resident set size of process ``pid`` in MB (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else None


def check_answer(ids: np.ndarray | list, scores: np.ndarray, exclude: list[str], k: int) -> str:
    """"ok" when every row has k ids, none of them excluded, with scores best first."""
    excluded = set(exclude)
    for row_ids, row_scores in zip(ids, scores):
        row_ids = [i.decode() if isinstance(i, bytes) else str(i) for i in row_ids]
        if len(row_ids) != k or any(i in excluded for i in row_ids if i):
            return "invalid_answer"
        if len(row_scores) != k or np.any(np.diff(np.asarray(row_scores, np.float64)) > 1e-5):
            return "invalid_answer"
    return "ok"


class RestCaller:
    """One keep-alive REST client: ``(query, exclude, k, rows=1) -> (kind, None, detail)``."""

    def __init__(self, port: int, model: str):
        self.client = RestClient("127.0.0.1", port, model, timeout=20)

    def __call__(self, query: str, exclude: list[str], k: int, rows: int = 1) -> tuple[str, int | None, str]:
        try:
            inputs = {"query_text": [query] * rows}
            if exclude:  # an empty exclusion list is left out (the signature's default)
                inputs["exclude_item_ids"] = [exclude] * rows
            out = self.client.predict(inputs)
        except ServingError as e:
            if e.code == 503 and "shutting down" in str(e.message):
                return "refused_503", None, ""
            return f"http_{e.code}", None, str(e.message)[:200]
        except ConnectionRefusedError:
            return "refused_connection", None, ""
        except (OSError, http.client.HTTPException) as e:
            return f"rest_{type(e).__name__}", None, str(e)[:200]
        if len(out["item_ids"]) != rows:
            return "invalid_answer", None, f"{len(out['item_ids'])} rows for {rows}"
        return check_answer(out["item_ids"], out["scores"], exclude, k), None, ""


class GrpcCaller:
    """One gRPC channel: ``(query, exclude, k, rows=1) -> (kind, served version, detail)``."""

    def __init__(self, port: int, model: str):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model

    def __call__(self, query: str, exclude: list[str], k: int, rows: int = 1) -> tuple[str, int | None, str]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["query_text"].CopyFrom(tf.make_tensor_proto([query] * rows, dtype=tf.string))
        if exclude:
            request.inputs["exclude_item_ids"].CopyFrom(tf.make_tensor_proto([exclude] * rows, dtype=tf.string))
        try:
            response = self.stub.Predict(request, timeout=20)
        except grpc.RpcError as e:
            code = e.code().name
            kind = "refused_unavailable" if code == "UNAVAILABLE" else f"grpc_{code}"
            return kind, None, str(e.details())[:200]
        ids = tf.make_ndarray(response.outputs["item_ids"])
        if len(ids) != rows:
            return "invalid_answer", None, f"{len(ids)} rows for {rows}"
        kind = check_answer(ids, tf.make_ndarray(response.outputs["scores"]), exclude, k)
        return kind, response.model_spec.version.value, ""


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The q-quantile (0..1) of latencies in seconds, in ms (nan for none)."""
    if not latencies_s:
        return float("nan")
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def warm_up(rest_port: int, model: str) -> tuple[int, list[str]]:
    """(k, a pool of item ids the queries return): what clients exclude."""
    probe = RestClient("127.0.0.1", rest_port, model, timeout=20)
    answers = [probe.predict({"query_text": [q]}) for q in QUERIES[:8]]
    pool = sorted({(i.decode() if isinstance(i, bytes) else str(i)) for a in answers for i in a["item_ids"][0]})
    return len(answers[0]["item_ids"][0]), pool
