"""Benchmark the retrieval indexes: recall@10 and queries/sec through loaded SavedModels.

    .venv/bin/python bench/index.py [--n 1000000] [--dim 64] [--queries 1000]

Data (synthetic, deterministic per --seed): a mixture of Gaussians with
--centers C centres drawn uniformly on the unit sphere; each item and query is
``normalize(center + sigma * g / sqrt(dim))`` with ``g ~ N(0, I)`` and a
uniformly chosen centre, so the noise has about the same norm as the centre
(``--sigma 1``) and clusters overlap noticeably. Queries come from the same
mixture but are distinct samples.

For each index (brute_force, ivf, scann, library defaults unless overridden)
the script builds it, saves it inside a SavedModel (``tfrec.index.save``: a
``serving_default`` signature taking query embeddings and an exclusion
matrix), drops it, reloads it (``tfrec.load_export``) and measures,
through the loaded ``serving_default`` signature:

* recall@10 of the index's top-10 against the loaded brute-force top-10;
* queries/sec at batch 1 and at batch 64 (no exclusions, warm-up first),
  timed in interleaved rounds across the indexes, best round kept, so that
  other load on the machine hits every index alike.

It prints one detail line per index and then, for the approximate ones,
exactly ``<kind>: recall@10=<r> speedup=<s>x`` where speedup = the index's
queries/sec / brute force's queries/sec, both at batch 64, same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
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


def mixture(n: int, centers: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors float32 ``[n, d]``: normalize(center + sigma * N(0, I/d)), built in chunks."""
    dim = centers.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centers[rng.integers(len(centers), size=m)]
        x += (sigma / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def make_data(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.centers, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    items = mixture(args.n, centers, args.sigma, rng)
    queries = mixture(args.queries, centers, args.sigma, rng)
    ids = np.array([f"item{i}" for i in range(args.n)], dtype=object)
    return items, ids, queries


def timed_calls(signature, batches: list[tf.Tensor], seconds: float, min_calls: int) -> float:
    """Queries/sec of ``signature`` over consecutive ``batches`` for about ``seconds``."""
    no_exclusions = tf.zeros([int(batches[0].shape[0]), 0], tf.string)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        signature(query_embeddings=batches[calls % len(batches)], exclude_item_ids=no_exclusions)
        calls += 1
    return calls * int(batches[0].shape[0]) / (time.perf_counter() - start)


def measure_throughput(
    signatures: dict[str, Any], queries: np.ndarray, batch: int, seconds: float, rounds: int
) -> dict[str, float]:
    """Best queries/sec per index at one batch size, rounds interleaved across indexes.

    Interleaving (brute force, ivf, scann, brute force, ...) and keeping each
    index's best round makes the ratios robust to other load on the machine.
    """
    batches = [tf.constant(queries[i : i + batch]) for i in range(0, len(queries) - batch + 1, batch)]
    for signature in signatures.values():  # warm-up: first calls fault pages in
        timed_calls(signature, batches, 0.0, 2)
    best = {kind: 0.0 for kind in signatures}
    for _ in range(rounds):
        for kind, signature in signatures.items():
            best[kind] = max(best[kind], timed_calls(signature, batches, seconds / rounds, 3))
    return best


class _SignatureSearch:
    """Adapts a loaded ``serving_default`` signature to ``recall_against_exact``."""

    def __init__(self, signature):
        self.signature = signature

    def search(self, queries, exclude):
        out = self.signature(query_embeddings=queries, exclude_item_ids=exclude)
        return out["scores"], out["item_ids"]


def index_params(args, kind: str) -> dict:
    if kind == "ivf":
        return {k: v for k, v in {"num_partitions": args.ivf_partitions, "nprobe": args.ivf_nprobe}.items() if v}
    if kind == "scann":
        params = {
            "num_leaves": args.scann_leaves,
            "num_leaves_to_search": args.scann_leaves_to_search,
            "reorder_k": args.scann_reorder,
        }
        return {k: v for k, v in params.items() if v}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="catalog size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and timing")
    parser.add_argument("--centers", type=int, default=100, help="mixture components C")
    parser.add_argument("--sigma", type=float, default=1.0, help="noise norm relative to the unit centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="brute_force,ivf,scann")
    parser.add_argument("--ivf-partitions", type=int)
    parser.add_argument("--ivf-nprobe", type=int)
    parser.add_argument("--scann-leaves", type=int)
    parser.add_argument("--scann-leaves-to-search", type=int)
    parser.add_argument("--scann-reorder", type=int)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per (index, batch size), all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds (best one is kept)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if kinds[0] != "brute_force":
        parser.error("--kinds must start with brute_force (it is the recall and speed reference)")

    t0 = time.perf_counter()
    items, ids, queries = make_data(args)
    print(
        f"data: n={args.n} dim={args.dim} queries={args.queries}: mixture of {args.centers} Gaussians, "
        f"unit centres, sigma={args.sigma}, unit-normalised ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    print(f"tf {tf.__version__}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, k={K}", flush=True)

    signatures: dict[str, Any] = {}
    recalls: dict[str, float] = {}
    register_ops()  # importing the op libraries is not load time
    with tempfile.TemporaryDirectory(prefix="tfrec_bench_index_") as tmp:
        for kind in kinds:
            t0 = time.perf_counter()
            index, note = index_lib.build_index(kind, items, ids, K, **index_params(args, kind))
            build_s = time.perf_counter() - t0
            params = index.params()
            path = os.path.join(tmp, kind)
            t0 = time.perf_counter()
            index_lib.save(index, path)
            save_s = time.perf_counter() - t0
            del index
            gc.collect()
            t0 = time.perf_counter()
            loaded = tfrec.load_export(path)
            load_s = time.perf_counter() - t0
            signatures[kind] = loaded.signatures["serving_default"]
            recalls[kind] = index_lib.recall_against_exact(
                _SignatureSearch(signatures[kind]), _SignatureSearch(signatures["brute_force"]), queries, k=K
            )
            print(
                f"[{kind}] build={build_s:.1f}s save={save_s:.1f}s load={load_s:.1f}s recall@{K}={recalls[kind]:.3f}"
                + (f" note={note!r}" if note else "")
                + f" params={json.dumps(params)}",
                flush=True,
            )
        qps1 = measure_throughput(signatures, queries, 1, args.seconds, args.rounds)
        qps64 = measure_throughput(signatures, queries, 64, args.seconds, args.rounds)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"timing done, load average {os.getloadavg()[0]:.1f}, peak RSS {peak_mb:.0f} MB", flush=True)
    for kind in kinds:
        print(f"  {kind}: queries/sec batch1={qps1[kind]:.0f} batch64={qps64[kind]:.0f}", flush=True)
    for kind in kinds[1:]:
        print(f"  {kind}: speedup at batch 1 = {qps1[kind] / qps1['brute_force']:.1f}x", flush=True)
    for kind in kinds[1:]:
        print(
            f"{kind}: recall@10={recalls[kind]:.3f} speedup={qps64[kind] / qps64['brute_force']:.1f}x", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
