"""Load, version swap and SIGTERM under load for ``python -m serving.server``.

Starts the server in a subprocess on free 127.0.0.1 ports (on a tiny model by
default; a real export's newest version is copied into a temporary model base
path, so the given folder is never changed), then:

- runs ``--clients`` threads for ``--seconds`` (half REST, half gRPC), each
  sending one-query retrieve requests with random exclusions and checking the
  answer (k ids, none excluded, scores sorted);
- publishes version 2 (``tfrec.export.layout.publish_version``) half way through;
- samples the server's RSS (``VmRSS`` of /proc/PID/status) every second;
- sends SIGTERM while the clients are still sending, lets every client run
  until it is refused, and checks the exit code.

Prints requests, errors by kind, p50/p99 latency, requests/s, RSS at 25/50/75/100%
of the run, ``rss growth second half: X MB``, the versions served before/after
the swap and ``server exit code on SIGTERM: N``. ``run_load`` is reused by
``tests/serving/test_load.py``.

Usage::

    .venv/bin/python bench/load.py                      # 32 clients, 20 s, tiny model
    .venv/bin/python bench/load.py --clients 8 --seconds 5 \\
        --model_base_path runs/x/export/tfrec --model_name tfrec
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import serving  # noqa: E402,F401  (tfrec's environment before tensorflow)
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfrec.export import layout  # noqa: E402
from serving.client import RestClient, ServingError  # noqa: E402
from tests.helpers.spawn import spawn_server as spawn  # noqa: E402

QUERIES = [f"query {i} space opera heist romance" for i in range(32)]


@dataclass
class Record:
    """One request: api, monotonic start/end, outcome kind ("ok" or an error kind), version."""
    api: str
    t0: float
    t1: float
    kind: str
    version: int | None = None
    detail: str = ""


def is_refusal(kind: str) -> bool:
    """A clean refusal: connection refused, REST 503 "shutting down", gRPC UNAVAILABLE.

    gRPC CANCELLED also counts when it comes after SIGTERM (see ``analyse``): a call
    that reaches the server after it began stopping is cancelled by gRPC, not run.
    """
    return kind.startswith("refused") or kind == "grpc_CANCELLED"


SURE_IN_FLIGHT_S = 0.1  # a request sent this long before SIGTERM has surely reached the server


def start_server(base: Path, model: str, poll_s: float = 0.5
                 ) -> tuple[subprocess.Popen, int, int, list[str]]:
    """The server on ports it picks itself: (proc, rest, grpc, log lines)."""
    return spawn(["--model_base_path", str(base), "--model_name", model, "--port", "0", "--rest_api_port", "0",
                  "--file_system_poll_wait_seconds", str(poll_s)])


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else None


def check_answer(ids: list[str], scores: np.ndarray, exclude: list[str], k: int) -> str:
    if len(ids) != k or any(i in exclude for i in ids if i):
        return "invalid_answer"
    if len(scores) != k or np.any(np.diff(np.asarray(scores, np.float64)) > 1e-5):
        return "invalid_answer"
    return "ok"


class _RestCaller:
    def __init__(self, port: int, model: str):
        self.client = RestClient("127.0.0.1", port, model, timeout=20)

    def __call__(self, query: str, exclude: list[str], k: int) -> tuple[str, int | None, str]:
        try:
            inputs = {"query_text": [query]}
            if exclude:  # an empty exclusion list is left out (the signature's default)
                inputs["exclude_item_ids"] = [exclude]
            out = self.client.predict(inputs)
        except ServingError as e:
            if e.code == 503 and "shutting down" in str(e.message):
                return "refused_503", None, ""
            return f"http_{e.code}", None, str(e.message)[:200]
        except ConnectionRefusedError:
            return "refused_connection", None, ""
        except (OSError, http.client.HTTPException) as e:
            return f"rest_{type(e).__name__}", None, str(e)[:200]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in out["item_ids"][0]]
        return check_answer(ids, out["scores"][0], exclude, k), None, ""


class _GrpcCaller:
    def __init__(self, port: int, model: str):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model

    def __call__(self, query: str, exclude: list[str], k: int) -> tuple[str, int | None, str]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["query_text"].CopyFrom(tf.make_tensor_proto([query], dtype=tf.string))
        if exclude:
            request.inputs["exclude_item_ids"].CopyFrom(
                tf.make_tensor_proto([exclude], dtype=tf.string))
        try:
            response = self.stub.Predict(request, timeout=20)
        except grpc.RpcError as e:
            code = e.code().name
            kind = "refused_unavailable" if code == "UNAVAILABLE" else f"grpc_{code}"
            return kind, None, str(e.details())[:200]
        ids = [i.decode() for i in tf.make_ndarray(response.outputs["item_ids"])[0]]
        kind = check_answer(ids, tf.make_ndarray(response.outputs["scores"])[0], exclude, k)
        return kind, response.model_spec.version.value, ""


def run_load(base: Path, model: str, new_version_src: Path, clients: int, seconds: float,
             sample_every: float = 1.0, seed: int = 0, publish_at: float = 0.5,
             log=print) -> dict[str, Any]:
    """Runs the whole scenario on ``base`` (newest version served first); see the docstring.

    ``new_version_src`` is published as the next version at ``publish_at`` of the run.

    Returns records, t_start, t_publish, t_term (monotonic), rss samples [(t, MB)],
    exit_code, seconds, log lines.
    """
    proc, rest_port, grpc_port, lines = start_server(base, model)
    try:
        # Warm-up: k and a pool of item ids the queries would return (for exclusions).
        probe = RestClient("127.0.0.1", rest_port, model, timeout=20)
        answers = [probe.predict({"query_text": [q]}) for q in QUERIES[:8]]
        k = len(answers[0]["item_ids"][0])
        pool = sorted({(i.decode() if isinstance(i, bytes) else str(i))
                       for a in answers for i in a["item_ids"][0]})
        for caller in (_RestCaller(rest_port, model), _GrpcCaller(grpc_port, model)):
            assert caller(QUERIES[0], pool[:1], k)[0] == "ok", "warm-up request failed"

        records: list[Record] = []
        rec_lock = threading.Lock()
        term = threading.Event()
        t_term = [float("inf")]
        ready = threading.Barrier(clients + 1)

        def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            call = (_RestCaller if i % 2 == 0 else _GrpcCaller)(
                rest_port if i % 2 == 0 else grpc_port, model)
            api = "rest" if i % 2 == 0 else "grpc"
            ready.wait()
            while True:
                exclude = rng.sample(pool, rng.randint(0, min(3, len(pool))))
                t0 = time.monotonic()
                kind, version, detail = call(rng.choice(QUERIES), exclude, k)
                t1 = time.monotonic()
                with rec_lock:
                    records.append(Record(api, t0, t1, kind, version, detail))
                if term.is_set() and (is_refusal(kind) or t1 > t_term[0] + 15):
                    return  # refused after SIGTERM: this client is done
                if kind != "ok":
                    time.sleep(0.01)  # no busy loop on errors

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        ready.wait()
        t_start = time.monotonic()
        samples: list[tuple[float, float]] = []
        t_publish = None
        next_sample = t_start
        while (now := time.monotonic()) < t_start + seconds:
            if t_publish is None and now >= t_start + seconds * publish_at:
                t_publish = time.monotonic()
                layout.publish_version(
                    base, lambda d: shutil.copytree(new_version_src, d, dirs_exist_ok=True))
                log(f"published version {layout.latest_version(base)} at "
                    f"{t_publish - t_start:.1f}s")
            if now >= next_sample:
                if (mb := rss_mb(proc.pid)) is not None:
                    samples.append((now, mb))
                next_sample += sample_every
            time.sleep(min(0.05, max(0.0, t_start + seconds - time.monotonic())))
        if (mb := rss_mb(proc.pid)) is not None:
            samples.append((time.monotonic(), mb))
        with rec_lock:  # requests started before this instant count as "before SIGTERM"
            t_term[0] = time.monotonic()
            term.set()
            proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=60)
        for t in threads:
            t.join(30)
        alive = sum(t.is_alive() for t in threads)
        if alive:
            raise RuntimeError(f"{alive} client threads still running after the server exited")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return dict(records=records, t_start=t_start, t_publish=t_publish, t_term=t_term[0],
                rss=samples, exit_code=exit_code, seconds=seconds, lines=lines)


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Summaries and the SIGTERM/version checks of a ``run_load`` result."""
    recs: list[Record] = result["records"]
    t_start, t_term, t_pub = result["t_start"], result["t_term"], result["t_publish"]
    before_term = [r for r in recs if r.t0 < t_term]
    ok = [r for r in before_term if r.kind == "ok"]
    errors = Counter(r.kind for r in recs if r.kind != "ok")
    # Before SIGTERM no request may fail at all; a request started before SIGTERM
    # gets a valid answer, or (a race with the stop) a clean refusal after SIGTERM;
    # after SIGTERM only valid answers and clean refusals are allowed.
    bad = [r for r in recs
           if r.kind != "ok" and not (is_refusal(r.kind) and r.t1 >= t_term)]
    # Stricter: a request sent well before SIGTERM was received before the server
    # began stopping, so it must have been answered (no refusal either).
    unanswered = [r for r in recs if r.kind != "ok" and r.t0 < t_term - SURE_IN_FLIGHT_S]
    in_flight = [r for r in recs if r.t0 < t_term <= r.t1]
    latencies = [r.t1 - r.t0 for r in ok]
    ordered = sorted(latencies)
    versions_before = sorted({r.version for r in ok if r.version is not None and r.t1 < t_pub})
    last_grpc = [r for r in ok if r.version is not None]
    last_grpc.sort(key=lambda r: r.t1)
    versions_after = sorted({r.version for r in last_grpc[-max(1, len(last_grpc) // 10):]})
    first_new = min((r.t1 for r in ok if r.version is not None and versions_before
                     and r.version > max(versions_before)), default=None)

    def rss_at(frac: float) -> float:
        t = t_start + frac * result["seconds"]
        chosen = [mb for ts, mb in result["rss"] if ts <= t + 1e-3]
        return chosen[-1] if chosen else result["rss"][0][1]

    return dict(
        requests=len(recs), requests_before_term=len(before_term), ok=len(ok), errors=errors,
        bad=bad, unanswered=unanswered, failed_before_term=[r for r in recs if r.kind != "ok" and r.t1 < t_term],
        p50_ms=statistics.median(ordered) * 1e3 if ordered else float("nan"),
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3 if ordered
        else float("nan"),
        rps=len(ok) / max(t_term - t_start, 1e-9),
        rss={f: rss_at(f) for f in (0.25, 0.5, 0.75, 1.0)},
        versions_before=versions_before, versions_after=versions_after,
        swap_s=None if first_new is None else first_new - t_pub,
        in_flight=len(in_flight), in_flight_ok=sum(r.kind == "ok" for r in in_flight),
        by_api=Counter(r.api for r in ok),
        answered_after_term=sum(r.kind == "ok" and r.t1 >= t_term for r in recs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--model_base_path", help="a real export's EXPORT/<model_name> (copied)")
    p.add_argument("--model_name", default="tiny")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, src = Path(tmp) / args.model_name, Path(tmp) / "new_version"
        if args.model_base_path:
            latest = layout.latest_version(args.model_base_path)
            if latest is None:
                sys.exit(f"no version under {args.model_base_path}")
            original = Path(args.model_base_path) / str(latest)
            layout.publish_version(base, lambda d: shutil.copytree(original, d, dirs_exist_ok=True))
            shutil.copytree(original, src)
        else:
            from tests.helpers.tiny_model import write_tiny_model
            layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
            write_tiny_model(src, seed=2)
        print(f"model {args.model_name}: {args.clients} clients (half REST, half gRPC) "
              f"for {args.seconds:g} s")
        result = run_load(base, args.model_name, src, args.clients, args.seconds)
    a = analyse(result)
    print(f"requests sent: {a['requests']} ({a['requests_before_term']} before SIGTERM; "
          f"ok rest {a['by_api']['rest']}, grpc {a['by_api']['grpc']})")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(a["errors"].items())) or "none"
    print(f"errors: {sum(a['errors'].values())} ({kinds}); "
          f"failed before SIGTERM: {len(a['failed_before_term'])}; "
          f"not allowed (neither answer nor clean refusal after SIGTERM): {len(a['bad'])}")
    print(f"latency p50 {a['p50_ms']:.2f} ms  p99 {a['p99_ms']:.2f} ms")
    print(f"requests/sec: {a['rps']:.1f}")
    print("rss: " + "  ".join(f"{int(f * 100)}% {mb:.1f} MB" for f, mb in a["rss"].items()))
    print(f"rss growth second half: {a['rss'][1.0] - a['rss'][0.5]:.1f} MB")
    swap = "never" if a["swap_s"] is None else f"{a['swap_s']:.2f} s after publishing"
    print(f"version served before swap: {a['versions_before']}, after: {a['versions_after']} "
          f"(first answer from the new version {swap})")
    print(f"unanswered requests sent > {SURE_IN_FLIGHT_S * 1e3:.0f} ms before SIGTERM: "
          f"{len(a['unanswered'])}")
    print(f"in flight at SIGTERM: {a['in_flight']}, answered: {a['in_flight_ok']}; "
          f"answers completed after SIGTERM: {a['answered_after_term']}")
    print(f"server exit code on SIGTERM: {result['exit_code']}")


if __name__ == "__main__":
    main()
