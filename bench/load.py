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

Before that, the maximal-exclusions mix (``bench/load_mix.py``) prints the normal
clients' p50/p99 with and without one client that sends the heaviest legal requests,
and their ratio (``ratio with/without the maximal-exclusions client: ...``; goal p99 <= 3x).
``--soak [SECONDS]`` runs only the soak (300 s by default): RSS at start and end, errors.

Usage::

    .venv/bin/python bench/load.py                      # mix, then 32 clients for 20 s, tiny model
    .venv/bin/python bench/load.py --soak               # 5-minute soak
    .venv/bin/python bench/load.py --clients 8 --seconds 5 \\
        --model_base_path runs/x/export/tfrec --model_name tfrec
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.load_clients import QUERIES, GrpcCaller, Record, RestCaller, is_refusal  # noqa: E402
from bench.load_clients import rss_mb, start_server, warm_up  # noqa: E402
from bench.load_mix import mix_lines, run_mix, run_soak, soak_lines  # noqa: E402
from tfrec.export import layout  # noqa: E402
from tests.helpers.tiny_model import write_tiny_model  # noqa: E402

SURE_IN_FLIGHT_S = 0.1  # a request sent this long before SIGTERM has surely reached the server


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
        k, pool = warm_up(rest_port, model)  # what clients exclude
        for caller in (RestCaller(rest_port, model), GrpcCaller(grpc_port, model)):
            assert caller(QUERIES[0], pool[:1], k)[0] == "ok", "warm-up request failed"

        records: list[Record] = []
        rec_lock = threading.Lock()
        term = threading.Event()
        t_term = [float("inf")]
        ready = threading.Barrier(clients + 1)

        def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            call = (RestCaller if i % 2 == 0 else GrpcCaller)(
                rest_port if i % 2 == 0 else grpc_port, model)
            api = "rest" if i % 2 == 0 else "grpc"
            ready.wait()
            while True:
                exclude = rng.sample(pool, rng.randint(0, min(3, len(pool))))
                t0 = time.monotonic()
                kind, version, _ = call(rng.choice(QUERIES), exclude, k)
                t1 = time.monotonic()
                with rec_lock:
                    records.append(Record(api, t0, t1, kind, version))
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
    p.add_argument("--mix_clients", type=int, default=8, help="normal clients of the maximal-exclusions mix")
    p.add_argument("--mix_seconds", type=float, default=12.0, help="0 skips the mix")
    p.add_argument("--max_exclusions", type=int, default=1000)
    p.add_argument("--max_batch_size", type=int, default=64)
    p.add_argument("--soak", type=float, nargs="?", const=300.0, default=0.0, metavar="SECONDS",
                   help="run only the soak, for SECONDS (300 when given without a value)")
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
            layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
            write_tiny_model(src, seed=2)
        limits = (args.max_exclusions, args.max_batch_size)
        if args.soak:
            print(f"soak: {args.mix_clients} normal clients, one maximal-exclusions client, one malformed-request "
                  f"client for {args.soak:g} s")
            for line in soak_lines(run_soak(base, args.model_name, args.mix_clients, args.soak, *limits)):
                print(line)
            return
        if args.mix_seconds > 0:
            print(f"mix: {args.mix_clients} normal clients (half REST, half gRPC) for {args.mix_seconds:g} s, "
                  f"a maximal-exclusions client in every other segment")
            for line in mix_lines(run_mix(base, args.model_name, args.mix_clients, args.mix_seconds,
                                          max_exclusions=args.max_exclusions, max_batch_size=args.max_batch_size),
                                  *limits):
                print(line)
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
