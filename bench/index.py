"""Benchmark the retrieval indexes: recall@10, queries/sec and memory through loaded SavedModels.

    .venv/bin/python bench/index.py [--n 1000000] [--dim 64] [--queries 1000] [--kinds ...]

Data (synthetic, deterministic per --seed): a mixture of Gaussians with
--centers C centres drawn uniformly on the unit sphere; each item and query is
``normalize(center + sigma * g / sqrt(dim))`` with ``g ~ N(0, I)`` and a
uniformly chosen centre, so the noise has about the same norm as the centre
(``--sigma 1``) and clusters overlap noticeably. Queries come from the same
mixture but are distinct samples.

For each index (brute_force, brute_force_int8, ivf, ivf_int8, scann; library
defaults unless overridden)
the script builds it, saves it inside a SavedModel (``tfrec.index.save``: a
``serving_default`` signature taking query embeddings and an exclusion
matrix), drops it, reloads it (``tfrec.load_export``) and measures,
through the loaded ``serving_default`` signature:

* recall@10 of the index's top-10 against the loaded brute-force top-10;
* queries/sec at batch 1 and at batch 64 (no exclusions, warm-up first),
  timed in interleaved rounds across the indexes, best round kept, so that
  other load on the machine hits every index alike; p50/p99 latency of the
  batch-1 calls (all rounds);
* the SavedModel's size, and the RSS of a fresh process that loads it and
  serves a few batches (the server's memory, as TF Serving would hold it).

The catalog lives in a memory-mapped file (``--n`` rows, generated in chunks),
so building an index never holds the float32 catalog twice in memory. With
``--keep DIR`` the files stay in DIR, and a later run with the same data reuses
the SavedModels found there (a 10^7 run can be finished in parts).

It prints one detail line per index and then, for the kinds other than
``brute_force``, exactly ``<kind>: recall@10=<r> speedup=<s>x`` where speedup
= the index's queries/sec / brute force's queries/sec, both at batch 64, same
run, and for every kind ``<kind>: bytes_per_item=<b>``: the SavedModel's
variables and assets (all of it the item side here) divided by the catalog size.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfrec  # noqa: E402  (must precede tensorflow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrec import index as index_lib  # noqa: E402
from tfrec.api import register_ops  # noqa: E402

K = 10


def mixture(n: int, centers: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 100_000,
            out: np.ndarray | None = None) -> np.ndarray:
    """``n`` unit vectors float32 ``[n, d]``: normalize(center + sigma * N(0, I/d)), built in chunks into ``out``."""
    dim = centers.shape[1]
    out = np.empty((n, dim), dtype=np.float32) if out is None else out
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centers[rng.integers(len(centers), size=m)]
        x += (sigma / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def make_data(args, folder: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items float32 [n, d], ids [n], queries float32 [queries, d]); items memory-mapped in ``folder`` if given."""
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.centers, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = None if folder is None else np.lib.format.open_memmap(
        os.path.join(folder, "items.npy"), mode="w+", dtype=np.float32, shape=(args.n, args.dim))
    items = mixture(args.n, centers, args.sigma, rng, out=out)
    queries = mixture(args.queries, centers, args.sigma, rng)
    ids = np.array([f"item{i}" for i in range(args.n)], dtype=object)
    return items, ids, queries


def timed_calls(signature, batches: list[tf.Tensor], seconds: float, min_calls: int,
                latencies: list[float] | None = None) -> float:
    """Queries/sec of ``signature`` over ``batches`` for about ``seconds``; call times go to ``latencies``."""
    no_exclusions = tf.zeros([int(batches[0].shape[0]), 0], tf.string)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        before = time.perf_counter()
        signature(query_embeddings=batches[calls % len(batches)], exclude_item_ids=no_exclusions)
        if latencies is not None:
            latencies.append(time.perf_counter() - before)
        calls += 1
    return calls * int(batches[0].shape[0]) / (time.perf_counter() - start)


def measure_throughput(
    signatures: dict[str, Any], queries: np.ndarray, batch: int, seconds: float, rounds: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Best queries/sec per index at one batch size (rounds interleaved across indexes), and every call's time.

    Interleaving (brute force, ivf, scann, brute force, ...) and keeping each
    index's best round makes the ratios robust to other load on the machine.
    """
    batches = [tf.constant(queries[i : i + batch]) for i in range(0, len(queries) - batch + 1, batch)]
    for signature in signatures.values():  # warm-up: first calls fault pages in
        timed_calls(signature, batches, 0.0, 2)
    best = {kind: 0.0 for kind in signatures}
    latencies: dict[str, list[float]] = {kind: [] for kind in signatures}
    for _ in range(rounds):
        for kind, signature in signatures.items():
            best[kind] = max(best[kind], timed_calls(signature, batches, seconds / rounds, 3, latencies[kind]))
    return best, latencies


class _SignatureSearch:
    """Adapts a loaded ``serving_default`` signature to ``recall_against_exact``."""

    def __init__(self, signature):
        self.signature = signature

    def search(self, queries, exclude):
        out = self.signature(query_embeddings=queries, exclude_item_ids=exclude)
        return out["scores"], out["item_ids"]


class _Fixed:
    """Serves stored results (the exact top-k, computed once) to ``recall_against_exact``."""

    def __init__(self, queries: np.ndarray, ids: np.ndarray):
        self.rows = {q.tobytes(): i for i, q in enumerate(queries)}
        self.ids = ids

    def search(self, queries, exclude):
        rows = [self.rows[q.tobytes()] for q in queries.numpy()]
        return None, tf.constant(self.ids[rows])


def index_params(args, kind: str) -> dict:
    if kind in ("ivf", "ivf_int8"):
        return {k: v for k, v in {"num_partitions": args.ivf_partitions, "nprobe": args.ivf_nprobe}.items() if v}
    if kind == "scann":
        params = {
            "num_leaves": args.scann_leaves,
            "num_leaves_to_search": args.scann_leaves_to_search,
            "reorder_k": args.scann_reorder,
        }
        return {k: v for k, v in params.items() if v}
    return {}


def folder_bytes(path: str, parts: tuple[str, ...] = ("variables", "assets")) -> int:
    """Bytes of the files under ``path/<part>`` for each part (all of ``path`` when parts is empty)."""
    roots = [os.path.join(path, part) for part in parts] if parts else [path]
    return sum(os.path.getsize(os.path.join(d, f)) for root in roots for d, _, files in os.walk(root) for f in files)


_SERVER_RSS = """
import sys, resource
sys.path.insert(0, {root!r})
import tfrec, numpy as np, tensorflow as tf
from tfrec.api import register_ops
register_ops()  # the op libraries are not the index's memory
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
signature = tfrec.load_export({path!r}).signatures["serving_default"]
queries = tf.constant(np.load({queries!r})[:64])
for batch in (1, 64, 1, 64):
    signature(query_embeddings=queries[:batch], exclude_item_ids=tf.zeros([batch, 0], tf.string))
after = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
print(before, after)
"""


def server_rss(path: str, queries_file: str) -> tuple[int, int]:
    """(RSS before loading, RSS after loading ``path`` and serving a few batches) of a fresh Python process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _SERVER_RSS.format(root=root, path=path, queries=queries_file)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the server-memory process for {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    before, after = out.stdout.split()[-2:]
    return int(before), int(after)


def build_and_load(args, kind: str, items, ids, queries, truth, tmp: str) -> tuple[Any, dict]:
    """Builds, saves, reloads one index; returns its loaded signature and a report of its figures."""
    path = os.path.join(tmp, kind)
    build_s = save_s = 0.0
    note, params = "reused the SavedModel in --keep", {}
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        t0 = time.perf_counter()
        index, note = index_lib.build_index(kind, items, ids, K, **index_params(args, kind))
        build_s = time.perf_counter() - t0
        params = index.params()
        t0 = time.perf_counter()
        index_lib.save(index, path)
        save_s = time.perf_counter() - t0
        del index
        gc.collect()
    t0 = time.perf_counter()
    signature = tfrec.load_export(path).signatures["serving_default"]
    load_s = time.perf_counter() - t0
    # truth None: this is the exact reference itself.
    recall = 1.0 if truth is None else index_lib.recall_against_exact(_SignatureSearch(signature), truth, queries, k=K)
    rss_before, rss_after = server_rss(path, os.path.join(tmp, "queries.npy"))
    report = {"build_s": build_s, "save_s": save_s, "load_s": load_s, "recall": recall, "note": note,
              "params": params, "saved_model_bytes": folder_bytes(path, ()),
              "bytes_per_item": folder_bytes(path) / args.n, "server_rss_bytes": rss_after - rss_before}
    return signature, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="catalog size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and timing")
    parser.add_argument("--centers", type=int, default=100, help="mixture components C")
    parser.add_argument("--sigma", type=float, default=1.0, help="noise norm relative to the unit centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="brute_force,brute_force_int8,ivf,ivf_int8,scann")
    parser.add_argument("--ivf-partitions", type=int)
    parser.add_argument("--ivf-nprobe", type=int)
    parser.add_argument("--scann-leaves", type=int)
    parser.add_argument("--scann-leaves-to-search", type=int)
    parser.add_argument("--scann-reorder", type=int)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per (index, batch size), all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds (best one is kept)")
    parser.add_argument("--tmp", help="folder for the catalog file and SavedModels (default: system temp)")
    parser.add_argument("--keep", help="work in this folder and keep it; a kind whose SavedModel is already there "
                                       "(same --n/--seed) is loaded, not rebuilt")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if kinds[0] != "brute_force":
        parser.error("--kinds must start with brute_force (it is the recall and speed reference)")

    signatures: dict[str, Any] = {}
    reports: dict[str, dict] = {}
    register_ops()  # importing the op libraries is not load time
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory(prefix="tfrec_bench_index_", dir=args.tmp)) as tmp:
        t0 = time.perf_counter()
        items, ids, queries = make_data(args, tmp)
        np.save(os.path.join(tmp, "queries.npy"), queries)
        print(
            f"data: n={args.n} dim={args.dim} queries={args.queries}: mixture of {args.centers} Gaussians, "
            f"unit centres, sigma={args.sigma}, unit-normalised ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        print(f"tf {tf.__version__}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, k={K}", flush=True)
        truth = None
        for kind in kinds:
            signatures[kind], reports[kind] = build_and_load(
                args, kind, items, ids, queries, truth, tmp)
            if truth is None:  # the exact top-k, once: every later kind is compared with it
                exact = _SignatureSearch(signatures["brute_force"])
                found = np.concatenate([exact.search(tf.constant(queries[i : i + 64]),
                                                     tf.zeros([len(queries[i : i + 64]), 0], tf.string))[1].numpy()
                                        for i in range(0, len(queries), 64)])
                truth = _Fixed(queries, found)
            r = reports[kind]
            print(
                f"[{kind}] build={r['build_s']:.1f}s save={r['save_s']:.1f}s load={r['load_s']:.1f}s "
                f"recall@{K}={r['recall']:.3f} saved_model={r['saved_model_bytes'] / 2**20:.0f}MB "
                f"server_rss={r['server_rss_bytes'] / 2**20:.0f}MB"
                + (f" note={r['note']!r}" if r["note"] else "") + f" params={json.dumps(r['params'])}",
                flush=True,
            )
        del items
        qps1, latencies = measure_throughput(signatures, queries, 1, args.seconds, args.rounds)
        qps64, _ = measure_throughput(signatures, queries, 64, args.seconds, args.rounds)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"timing done, load average {os.getloadavg()[0]:.1f}, peak RSS {peak_mb:.0f} MB", flush=True)
    for kind in kinds:
        p50, p99 = np.percentile(latencies[kind], [50, 99]) * 1000
        print(f"  {kind}: queries/sec batch1={qps1[kind]:.0f} batch64={qps64[kind]:.0f} "
              f"batch1 latency p50={p50:.1f}ms p99={p99:.1f}ms", flush=True)
    for kind in kinds[1:]:
        print(f"  {kind}: speedup at batch 1 = {qps1[kind] / qps1['brute_force']:.1f}x", flush=True)
    for kind in kinds[1:]:
        print(
            f"{kind}: recall@10={reports[kind]['recall']:.3f} speedup={qps64[kind] / qps64['brute_force']:.1f}x",
            flush=True,
        )
    for kind in kinds:
        print(f"{kind}: bytes_per_item={reports[kind]['bytes_per_item']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
