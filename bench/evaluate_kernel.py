"""The full-catalog rank kernel against the one it replaced, side by side on the same random embeddings.

    nice -n 5 .venv/bin/python bench/evaluate_kernel.py [--queries 8192] [--items 100000] [--dim 64] [--rounds 3]

``new`` is :func:`tfrec.evaluate.target_ranks` (one compiled while loop per
chunk of 1,024 queries over 1,024-item blocks); ``old`` is the kernel it
replaced, kept here as the reference: a Python loop over 4,096-item blocks,
one ``tf.function`` call per block, the left-out pairs found with NumPy per
block. Both rank the same seeded queries against the same catalog and must
return identical ranks (checked). Rounds alternate old and new so that load
from other processes falls on both; the script prints each round's seconds
and ``ratio new/old`` (median over rounds) of wall time and of this process's
CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import tfrec  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import tensorflow as tf  # noqa: E402
from tfrec import evaluate  # noqa: E402


@tf.function(reduce_retracing=True)
def _old_count_block(queries, block, target_scores, pairs):
    scores = tf.matmul(queries, block, transpose_b=True)
    return tf.reduce_sum(tf.cast(scores >= target_scores, tf.int32), axis=1), tf.gather_nd(scores, pairs)


def old_target_ranks(query_embeddings: np.ndarray, item_embeddings: np.ndarray, targets: np.ndarray,
                     query_chunk: int = 1024, item_chunk: int = 4096) -> np.ndarray:
    """The replaced kernel (no exclusions, as in bench/scale.py): int64 [num_queries] ranks."""
    items = tf.constant(item_embeddings, tf.float32)
    n_items = int(items.shape[0])
    ranks = []
    for start in range(0, len(targets), query_chunk):
        t = targets[start:start + query_chunk]
        q = tf.constant(query_embeddings[start:start + query_chunk], tf.float32)
        target_scores = tf.linalg.diag_part(tf.matmul(q, tf.gather(items, t), transpose_b=True))[:, None]
        rows, cols = np.arange(len(t), dtype=np.int64), np.asarray(t, np.int64)
        count = np.ones(len(t), np.int64)
        threshold = target_scores.numpy()[:, 0]
        for c0 in range(0, n_items, item_chunk):
            c1 = min(c0 + item_chunk, n_items)
            inside = (cols >= c0) & (cols < c1)
            pairs = np.stack([rows[inside], cols[inside] - c0], axis=1).astype(np.int32)
            counted, picked = _old_count_block(q, items[c0:c1], target_scores, tf.constant(pairs.reshape(-1, 2)))
            count += counted.numpy()
            np.subtract.at(count, rows[inside], picked.numpy() >= threshold[rows[inside]])
        ranks.append(count)
    return np.concatenate(ranks)


def timed(fn) -> tuple[float, float, np.ndarray]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8192)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    items = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    targets = rng.integers(0, args.items, size=args.queries)
    kernels = {"old": lambda: old_target_ranks(q, items, targets),
               "new": lambda: evaluate.target_ranks(q, items, targets)}
    evaluate.target_ranks(q[:8], items, targets[:8]), old_target_ranks(q[:8], items, targets[:8])  # traced once
    walls, cpus = {k: [] for k in kernels}, {k: [] for k in kernels}
    for r in range(args.rounds):
        results = {}
        for name, fn in kernels.items():
            wall, cpu, results[name] = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
        if not np.array_equal(results["old"], results["new"]):
            print(f"ranks differ in {int(np.sum(results['old'] != results['new']))} queries", file=sys.stderr)
            return 1
        print(f"round {r + 1}: old {walls['old'][-1]:.2f}s (cpu {cpus['old'][-1]:.2f}s), "
              f"new {walls['new'][-1]:.2f}s (cpu {cpus['new'][-1]:.2f}s)", flush=True)
    size = f"{args.queries}x{args.items}x{args.dim}"
    print(f"ratio new/old wall at {size}: {statistics.median(walls['new']) / statistics.median(walls['old']):.3f} "
          f"({args.rounds} rounds, ranks identical)")
    print(f"ratio new/old cpu at {size}: {statistics.median(cpus['new']) / statistics.median(cpus['old']):.3f} "
          f"({args.rounds} rounds, ranks identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
