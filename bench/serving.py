"""Serving overhead: REST and gRPC single-query latency vs calling the signature directly.

Starts ``python -m serving.server`` in a subprocess on free 127.0.0.1 ports (on
a tiny hash-embedding model by default, or on a real export), then measures in
this process, all in one run:

- direct: p50/p99 of the loaded ``serving_default`` signature called in-process;
- rest / grpc: p50/p99 of one-query requests over a keep-alive connection,
  and the line ``<api> ratio server/direct p50: X``;
- throughput (requests/s) with 1 and 16 concurrent clients, and the mean rows
  per TensorFlow call the server's batcher formed.

Usage::

    .venv/bin/python bench/serving.py                       # tiny model, < 60 s
    .venv/bin/python bench/serving.py --model_base_path runs/x/export/tfrec --model_name tfrec
    .venv/bin/python bench/serving.py --hybrid_items 100000   # hybrid (dense + BM25) vs dense-only, direct

``--hybrid_items N`` saves two models over one random N-item catalog
(:mod:`bench.hybrid_models`), dense-only and hybrid, and prints each one's
direct p50/p99 (the two models' calls taking turns) and the line ``hybrid/dense p50: X``, for a query of
three mid-frequency words and one of the three most common words.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import serving  # noqa: E402,F401  (tfrec's environment before tensorflow)
import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from bench.hybrid_models import write_pair  # noqa: E402
from tfrec.export import layout  # noqa: E402
from tfrec.api import load_export  # noqa: E402
from tests.helpers.spawn import spawn_server as spawn  # noqa: E402
from tests.helpers.tiny_model import write_tiny_model  # noqa: E402

QUERY = "a space opera with a heist"


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1e3,
            ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3)


def timed(fn: Callable[[], object], seconds: float, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def throughput(make_call: Callable[[], Callable[[], object]], clients: int, seconds: float
               ) -> float:
    """Requests/s of ``clients`` threads, each calling its own ``make_call()`` in a loop."""
    counts, errors = [0] * clients, []
    start_line = threading.Barrier(clients + 1)
    end = [0.0]

    def run(i: int) -> None:
        call = make_call()
        call()
        start_line.wait()
        while time.perf_counter() < end[0]:
            try:
                call()
                counts[i] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    end[0] = time.perf_counter() + seconds + 0.05
    start_line.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - t0)


def rest_caller(port: int, model: str) -> Callable[[], object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"instances": [{"query_text": QUERY}]}).encode()
    headers = {"Content-Type": "application/json"}

    def call() -> object:
        conn.request("POST", f"/v1/models/{model}:predict", body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(data[:200])
        return data
    return call


def grpc_caller(port: int, model: str) -> Callable[[], object]:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["query_text"].CopyFrom(tf.make_tensor_proto([QUERY]))
    return lambda: stub.Predict(request, timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_base_path", help="a real export's EXPORT/<model_name>")
    p.add_argument("--model_name", default="tiny")
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    p.add_argument("--hybrid_items", type=int, help="compare hybrid and dense-only models on this many items")
    args = p.parse_args()
    if args.hybrid_items:
        return hybrid_against_dense(args.hybrid_items, args.seconds)
    tmp = tempfile.TemporaryDirectory()
    if args.model_base_path:
        base = Path(args.model_base_path)
    else:
        base = Path(tmp.name) / args.model_name
        layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
    version = layout.latest_version(base)
    if version is None:
        sys.exit(f"no version under {base}")
    proc, rest_port, grpc_port, _ = spawn(["--model_base_path", str(base), "--model_name", args.model_name,
                                           "--port", "0", "--rest_api_port", "0"])
    try:
        fn = load_export(base / str(version)).signatures["serving_default"]
        feed = {"query_text": tf.constant([QUERY]), "exclude_item_ids": tf.zeros([1, 0], tf.string)}
        feed = {k: v for k, v in feed.items() if k in fn.structured_input_signature[1]}
        print(f"model {args.model_name} version {version}: {base}")
        direct_p50, direct_p99 = percentiles(timed(lambda: fn(**feed), args.seconds))
        print(f"direct  p50 {direct_p50:7.3f} ms  p99 {direct_p99:7.3f} ms")
        for api, caller, port in (("rest", rest_caller, rest_port), ("grpc", grpc_caller, grpc_port)):
            p50, p99 = percentiles(timed(caller(port, args.model_name), args.seconds))
            print(f"{api:<7} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
            print(f"{api} ratio server/direct p50: {p50 / direct_p50:.1f}")
        for api, caller, port in (("rest", rest_caller, rest_port), ("grpc", grpc_caller, grpc_port)):
            for clients in (1, 16):
                rps = throughput(lambda: caller(port, args.model_name), clients, args.seconds)
                print(f"{api:<7} throughput with {clients:2d} clients: {rps:8.1f} requests/s")
        metrics = rest_metrics(rest_port)
        print(f"server batches: {metrics[1]:.0f} TensorFlow calls, "
              f"mean {metrics[0] / max(metrics[1], 1):.2f} rows per call")
    finally:
        proc.terminate()
        print(f"server exit code on SIGTERM: {proc.wait(timeout=30)}")
        tmp.cleanup()


def hybrid_against_dense(num_items: int, seconds: float) -> None:
    """Direct p50/p99 of the hybrid and the dense-only SavedModel on one catalog, and their p50 ratio.

    The two models' calls alternate, so a neighbour's load on the shared cores lands on both alike.
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pair(Path(tmp), num_items)
        loaded = {name: tf.saved_model.load(str(path)) for name, path in paths.items()}  # kept: their variables
        for text, what in QUERIES:
            feed = {"query_text": tf.constant([text]), "exclude_item_ids": tf.zeros([1, 0], tf.string)}
            calls = {name: (lambda fn=m.signatures["serving_default"]: fn(**feed)) for name, m in loaded.items()}
            samples = alternating(calls, seconds)
            p50s = {}
            for name, times in samples.items():
                p50s[name], p99 = percentiles(times)
                print(f"{name:<7} {num_items} items  {what:<24} direct p50 {p50s[name]:7.3f} ms  p99 {p99:7.3f} ms")
            print(f"hybrid/dense p50: {p50s['hybrid'] / p50s['dense']:.2f}  ({what}: {text!r})")


# The ratio line the hybrid is held to first: words of middling frequency. Words in many titles (stop words)
# cost the hybrid more postings; their line is printed after it.
QUERIES = (("w17 w250 w1200", "three mid-frequency words"), ("w1 w2 w3", "three most common words"))


def alternating(calls: dict[str, Callable[[], object]], seconds: float, warmup: int = 20) -> dict[str, list[float]]:
    """Per call name, the seconds of each call, the calls taking turns for ``seconds`` each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    end = time.perf_counter() + seconds * len(calls)
    while time.perf_counter() < end:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return samples


def rest_metrics(port: int) -> tuple[float, float]:
    """(rows, calls) summed over the server's batch-size histograms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/monitoring/prometheus/metrics")
    text = conn.getresponse().read().decode()
    rows = sum(float(v) for v in re.findall(r"^tfrec_serving_batch_size_sum\{.*\} (\S+)$", text, re.M))
    calls = sum(float(v) for v in re.findall(r"^tfrec_serving_batch_size_count\{.*\} (\S+)$", text, re.M))
    return rows, calls


if __name__ == "__main__":
    main()
