"""bench/load.py's hostile scenarios: a client sending maximal-but-legal exclusions, and a soak.

``run_mix``: ``clients`` normal clients (half REST, half gRPC; one query, 0-3 exclusions)
run throughout; in every other segment of the run one more client sends the heaviest
requests the limits allow (``--max_batch_size`` rows of ``--max_exclusions`` ids each,
alternating REST and gRPC). The normal clients' latencies in the segments with and without
it are compared: the segments alternate, so both halves see the same machine.

``run_soak``: normal clients, the maximal client and a malformed-request client (lone
surrogates, over-limit exclusions, 1.3M ids, a declared ``[1, 2**21]`` proto, bad JSON,
duplicate Content-Length) for ``seconds``; RSS is sampled every second. Errors are any
normal or maximal request that is not answered correctly, and any malformed one that is
not refused with a 4xx / INVALID_ARGUMENT.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from bench.load_clients import QUERIES, GrpcCaller, RestCaller, percentile_ms, rss_mb, start_server, warm_up


def maximal_exclusions(pool: list[str], max_exclusions: int) -> list[str]:
    """``max_exclusions`` ids: three the queries would return, the rest absent from the catalog."""
    return pool[:3] + [f"absent_item_{n:06d}" for n in range(max_exclusions - 3)]


def _normal_clients(n: int, rest_port: int, grpc_port: int, model: str, k: int, pool: list[str],
                    stop: threading.Event, record: Callable[[str, float, float, str], None]) -> list[threading.Thread]:
    def client(i: int) -> None:
        rng = random.Random(i)
        call = RestCaller(rest_port, model) if i % 2 == 0 else GrpcCaller(grpc_port, model)
        while not stop.is_set():
            exclude = rng.sample(pool, rng.randint(0, min(3, len(pool))))
            t0 = time.monotonic()
            kind = call(rng.choice(QUERIES), exclude, k)[0]
            record("normal", t0, time.monotonic(), kind)

    return [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]


def _maximal_client(rest_port: int, grpc_port: int, model: str, k: int, exclude: list[str], rows: int,
                    active: Callable[[], bool], stop: threading.Event,
                    record: Callable[[str, float, float, str], None]) -> threading.Thread:
    def client() -> None:
        callers = [RestCaller(rest_port, model), GrpcCaller(grpc_port, model)]
        n = 0
        while not stop.is_set():
            if not active():
                time.sleep(0.01)
                continue
            t0 = time.monotonic()
            kind = callers[n % 2](QUERIES[n % len(QUERIES)], exclude, k, rows=rows)[0]
            record("maximal", t0, time.monotonic(), kind)
            n += 1

    return threading.Thread(target=client, daemon=True)


def run_mix(base: Path, model: str, clients: int, seconds: float, segments: int = 6,
            max_exclusions: int = 1000, max_batch_size: int = 64) -> dict[str, Any]:
    """Normal clients' latencies with and without a maximal-exclusions client; see the module docstring.

    Returns ``without`` / ``with`` (normal latencies in s), ``maximal`` (its latencies), ``errors`` (Counter).
    """
    proc, rest_port, grpc_port, _ = start_server(
        base, model, flags=("--max_exclusions", str(max_exclusions), "--max_batch_size", str(max_batch_size)))
    try:
        k, pool = warm_up(rest_port, model)
        records: list[tuple[str, float, float, str, bool]] = []  # who, t0, t1, kind, maximal client on
        stop, hostile_on = threading.Event(), threading.Event()
        lock = threading.Lock()

        def record(who: str, t0: float, t1: float, kind: str) -> None:
            with lock:
                records.append((who, t0, t1, kind, hostile_on.is_set()))

        threads = _normal_clients(clients, rest_port, grpc_port, model, k, pool, stop, record)
        threads.append(_maximal_client(rest_port, grpc_port, model, k, maximal_exclusions(pool, max_exclusions),
                                       max_batch_size, hostile_on.is_set, stop, record))
        for t in threads:
            t.start()
        time.sleep(min(2.0, seconds / 10))  # warm-up: not measured
        with lock:
            records.clear()
        for segment in range(segments):
            (hostile_on.set if segment % 2 else hostile_on.clear)()
            time.sleep(seconds / segments)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        proc.kill()
        proc.wait(10)
    normal = [(t1 - t0, on) for who, t0, t1, kind, on in records if who == "normal" and kind == "ok"]
    return {"without": [s for s, on in normal if not on], "with": [s for s, on in normal if on],
            "maximal": [t1 - t0 for who, t0, t1, kind, _ in records if who == "maximal" and kind == "ok"],
            "errors": Counter(f"{who} {kind}" for who, _, _, kind, _ in records if kind != "ok")}


def mix_lines(result: dict[str, Any], max_exclusions: int, max_batch_size: int) -> list[str]:
    """The printed summary of ``run_mix``, ending with the ratio line."""
    w, wo, m = result["with"], result["without"], result["maximal"]
    errors = ", ".join(f"{k} {n}" for k, n in sorted(result["errors"].items())) or "none"
    return [
        f"normal clients alone: {len(wo)} requests, p50 {percentile_ms(wo, .5):.2f} ms, p99 {percentile_ms(wo, .99):.2f} ms",
        f"normal clients with a maximal-exclusions client ({max_batch_size} rows x {max_exclusions} ids, "
        f"{len(m)} requests, its p50 {percentile_ms(m, .5):.1f} ms): {len(w)} requests, "
        f"p50 {percentile_ms(w, .5):.2f} ms, p99 {percentile_ms(w, .99):.2f} ms",
        f"errors: {sum(result['errors'].values())} ({errors})",
        f"ratio with/without the maximal-exclusions client: p50 {percentile_ms(w, .5) / percentile_ms(wo, .5):.2f}x, "
        f"p99 {percentile_ms(w, .99) / percentile_ms(wo, .99):.2f}x (goal p99 <= 3x)",
    ]


# ----------------------------------------------------------------------------- soak
def _string_proto(dims: list[int], values: list[bytes]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values, tensor_shape=(
        tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])))


def _malformed_requests(rest_port: int, grpc_port: int, model: str, max_exclusions: int
                        ) -> list[Callable[[], str]]:
    """Calls that each send one malformed request and return "ok" if it was refused as it should be."""
    path = f"/v1/models/{model}:predict"
    huge = b'{"instances": [{"query_text": "a", "exclude_item_ids": [' + b'"",' * 1_299_999 + b'""]}]}'

    def rest(body: bytes, duplicate_length: bool = False) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=20)
        try:
            conn.putrequest("POST", path)
            for _ in range(2 if duplicate_length else 1):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return f"rest_{type(e).__name__}"
        finally:
            conn.close()
        return "ok" if status == 400 else f"http_{status}"

    stub = GrpcCaller(grpc_port, model).stub

    def grpc_call(dims: list[int], values: list[bytes]) -> str:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["query_text"].CopyFrom(_string_proto([1], [b"a"]))
        request.inputs["exclude_item_ids"].CopyFrom(_string_proto(dims, values))
        try:
            stub.Predict(request, timeout=20)
        except grpc.RpcError as e:
            return "ok" if e.code() == grpc.StatusCode.INVALID_ARGUMENT else f"grpc_{e.code().name}"
        return "grpc_accepted"

    over = json.dumps({"instances": [{"query_text": "a", "exclude_item_ids": ["x"] * (max_exclusions + 1)}]})
    return [
        lambda: rest(b'{"instances": [{"query_text": "\\ud800"}]}'),
        lambda: rest(over.encode()),
        lambda: rest(b'{"instances": [{"query_text": '),
        lambda: rest(b'{"instances": ["a"]}', duplicate_length=True),
        lambda: grpc_call([1, 1 << 21], [b"item_01"]),
        lambda: grpc_call([1, 2], [b"a", b"b", b"c"]),
        lambda: rest(huge),
    ]


def run_soak(base: Path, model: str, clients: int, seconds: float, max_exclusions: int = 1000,
             max_batch_size: int = 64) -> dict[str, Any]:
    """Normal, maximal and malformed clients for ``seconds``; see the module docstring.

    Returns ``rss`` [(t, MB)] from the start of the load, ``counts`` and ``errors`` (Counters by client kind).
    """
    proc, rest_port, grpc_port, _ = start_server(
        base, model, flags=("--max_exclusions", str(max_exclusions), "--max_batch_size", str(max_batch_size)))
    try:
        k, pool = warm_up(rest_port, model)
        counts, errors = Counter(), Counter()
        stop, lock = threading.Event(), threading.Lock()

        def record(who: str, t0: float, t1: float, kind: str) -> None:
            with lock:
                counts[who] += 1
                if kind != "ok":
                    errors[f"{who} {kind}"] += 1

        def malformed_client() -> None:
            calls = _malformed_requests(rest_port, grpc_port, model, max_exclusions)
            n = 0
            while not stop.is_set():
                call = calls[n % len(calls)] if n % 20 else calls[-1]  # the 3.9 MB body every 20th time
                t0 = time.monotonic()
                record("malformed", t0, time.monotonic(), call())
                n += 1
                time.sleep(0.02)

        threads = _normal_clients(clients, rest_port, grpc_port, model, k, pool, stop, record)
        threads.append(_maximal_client(rest_port, grpc_port, model, k, maximal_exclusions(pool, max_exclusions),
                                       max_batch_size, lambda: True, stop, record))
        threads.append(threading.Thread(target=malformed_client, daemon=True))
        start = time.monotonic()
        rss = [(0.0, rss_mb(proc.pid))]
        for t in threads:
            t.start()
        while (now := time.monotonic()) < start + seconds:
            time.sleep(min(1.0, start + seconds - now))
            rss.append((time.monotonic() - start, rss_mb(proc.pid)))
        stop.set()
        for t in threads:
            t.join(30)
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
    return {"rss": rss, "counts": counts, "errors": errors, "seconds": seconds, "server_alive": alive}


def soak_lines(result: dict[str, Any]) -> list[str]:
    """The printed summary of ``run_soak``.

    RSS moves by tens of MB from one second to the next under this load (big requests come and
    go), so "start" is the median of the samples 5-15% into the run (after warm-up) and "end" the
    median of the last 10%.
    """
    rss = [(t, mb) for t, mb in result["rss"] if mb is not None]
    seconds = result["seconds"]
    settled = statistics.median([mb for t, mb in rss if 0.05 * seconds <= t <= 0.15 * seconds] or [rss[1][1]])
    end = statistics.median([mb for t, mb in rss if t >= 0.9 * seconds] or [rss[-1][1]])
    counts = ", ".join(f"{k} {n}" for k, n in sorted(result["counts"].items()))
    errors = ", ".join(f"{k} {n}" for k, n in sorted(result["errors"].items())) or "none"
    return [
        f"soak: {result['seconds']:g} s, {sum(result['counts'].values())} requests ({counts}); "
        f"server alive at the end: {result['server_alive']}",
        f"soak rss: before load {rss[0][1]:.1f} MB, start (5-15% in) {settled:.1f} MB, end (last 10%) {end:.1f} MB, "
        f"growth {100 * (end - settled) / settled:+.1f}% (goal <= 10%)",
        f"soak errors: {sum(result['errors'].values())} ({errors}) (goal 0)",
    ]
