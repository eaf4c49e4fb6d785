"""The hybrid stage's scoring against the one it replaced, side by side on one synthetic shop.

    nice -n 5 .venv/bin/python bench/hybrid_eval.py [--queries 20000] [--items 100000] [--exclude-seen]

The shop comes from :func:`tfrec.data.synthetic.write_shop` (held-out files,
``--queries`` test and validation users), read as a run reads it; item
embeddings are random, each query's is its target's plus noise. Both sides do
what the ``hybrid`` stage does: every fusion and weight on the validation
sample (``eval.validation_max_queries``), then the chosen fusion at weights
1 and 0.4 on the test split. ``old`` is the code replaced, kept here as the
reference: 256-query batches through :meth:`HybridIndex.candidates` (exclusions
as padded strings), the fusion per weight (reciprocal ranks from [batch, c, c]
comparisons), the test's dense ranks computed again. ``new`` is :func:`tfrec.hybrid.metrics_by_choice`, given the test's dense
ranks as the evaluator has them. The script checks both give the same metrics
and prints each side's seconds, the ``bm25`` baseline's on the same test split
and ``ratio old/new``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import tfrec  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import tensorflow as tf  # noqa: E402
from tfrec import config as config_lib, evaluate, hybrid, run as run_lib  # noqa: E402
from tfrec.baselines import bm25_baseline  # noqa: E402
from tfrec.data import synthetic  # noqa: E402
from tfrec.index.hybrid import FUSIONS, RRF_K, minmax  # noqa: E402


def old_rank_among(scores, valid):
    higher = tf.logical_and(scores[:, None, :] > scores[:, :, None], valid[:, None, :])  # [batch, c, c]
    return 1.0 + tf.reduce_sum(tf.cast(higher, tf.float32), axis=2)


def old_fuse(dense, lexical, valid, weight, fusion):
    """The replaced ``tfrec.index.hybrid.fuse``: reciprocal ranks from [batch, c, c] comparisons."""
    weight = tf.cast(weight, tf.float32)
    if fusion == "reciprocal_rank":
        reached = tf.logical_and(valid, lexical > 0)
        lexical_part = tf.where(reached, 1.0 / (RRF_K + old_rank_among(lexical, reached)), 0.0)
        fused = (1.0 - weight) / (RRF_K + old_rank_among(dense, valid)) + weight * lexical_part
    else:
        fused = (1.0 - weight) * minmax(dense, valid) + weight * minmax(lexical, valid)
    return tf.where(valid, fused, tf.fill(tf.shape(fused), -np.inf))


def old_padded_ids(rows, item_ids, start, stop):
    if rows is None:
        return np.zeros([stop - start, 0], object)
    chunk = rows[start:stop]
    out = np.full([stop - start, max([len(r) for r in chunk] + [0])], "", object)
    for i, r in enumerate(chunk):
        out[i, :len(r)] = [item_ids[j] for j in r]
    return out


def old_fused_ranks(index, query_embeddings, query_text, targets, exclude, dense_ranks, weights, item_ids, fusions):
    """The replaced ``tfrec.hybrid.fused_ranks``: served candidates per 256-query batch, ``fuse`` per weight."""
    n = len(targets)
    out = {(f, w): np.zeros(n, np.int64) for f in fusions for w in weights}
    keep = None if exclude is None else [np.asarray(e)[np.asarray(e) != t] for e, t in zip(exclude, targets)]
    candidates = tf.function(index.candidates, reduce_retracing=True)
    fused_by = {f: tf.function(lambda d, lx, v, w, f=f: old_fuse(d, lx, v, w, f), reduce_retracing=True) for f in fusions}
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        rows, dense, lexical, valid = candidates(
            tf.constant(query_embeddings[start:stop], tf.float32), tf.constant(list(query_text[start:stop])),
            tf.constant(old_padded_ids(keep, item_ids, start, stop), tf.string))
        rows = rows.numpy()
        is_target = (rows == targets[start:stop, None]) & valid.numpy()
        found = is_target.any(axis=1)
        column = np.where(found, is_target.argmax(axis=1), 0)[:, None]
        earlier = np.arange(rows.shape[1])[None, :] < column
        outside = valid.numpy().sum(axis=1) + dense_ranks[start:stop]
        for fusion, w in out:
            fused = fused_by[fusion](dense, lexical, valid, tf.constant(w, tf.float32)).numpy()
            mine = np.take_along_axis(fused, column, axis=1)
            ahead = ((fused > mine) | ((fused == mine) & earlier)).sum(axis=1)
            out[fusion, w][start:stop] = np.where(found, 1 + ahead, outside)
    return out


def old_metrics_by_choice(embeddings, data, split, cfg, weights, lexical, fusions):
    queries, items = embeddings
    targets, exclude = evaluate._targets_and_exclusions(data, split, cfg.eval.exclude_seen)
    dense = evaluate.target_ranks(queries, items, targets, exclude)
    index = hybrid.exact_hybrid(items, data, cfg.export.k, lexical=lexical)
    ranks = old_fused_ranks(index, queries, getattr(data, split).query_text, targets, exclude, dense, weights,
                            data.catalog.item_ids, fusions)
    return {c: evaluate.metrics_from_ranks(r, cfg.eval.ks) for c, r in ranks.items()}


def shop_data(args):
    folder = Path(args.folder) / f"shop-{args.interactions}x{args.items}-q{args.queries}"
    if not (folder / "test.csv").exists():
        synthetic.write_shop(str(folder), args.interactions, args.items, held_out_files=True,
                             held_out_users=args.queries)
    cfg = config_lib.build("smoke", sets=[
        f"data.interactions.path={folder / 'train.csv'}", "data.split.method=files",
        f"data.split.validation_path={folder / 'validation.csv'}", f"data.split.test_path={folder / 'test.csv'}",
        f"data.items.path={folder / 'items.csv'}", "data.items.text_columns=[title, category]",
        "data.items.categorical_columns=[category]", "eval.ks=[10, 100]", "export.k=100",
        f"eval.exclude_seen={str(args.exclude_seen).lower()}", "model.query_encoder.checkpoint=random://tiny"])
    return cfg, run_lib.load_data(cfg, str(folder))


def embeddings(data, split: str, items: np.ndarray, seed: int) -> np.ndarray:
    """float32 [len(split), d]: each query's target embedding plus noise."""
    targets, _ = evaluate._targets_and_exclusions(data, split, False)
    noise = np.random.default_rng(seed).normal(size=[len(targets), items.shape[1]])
    return (items[targets] + 1.5 * noise).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--exclude-seen", action="store_true")
    parser.add_argument("--folder", default="/tmp/hybrid_eval")
    args = parser.parse_args(argv)
    cfg, data = shop_data(args)
    items = np.random.default_rng(0).normal(size=[len(data.catalog), args.dim]).astype(np.float32)
    val = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
    val_q, test_q = embeddings(val, "validation", items, 1), embeddings(data, "test", items, 2)
    targets, exclude = evaluate._targets_and_exclusions(data, "test", cfg.eval.exclude_seen)
    dense = evaluate.target_ranks(test_q, items, targets, exclude)  # the evaluator's, before the hybrid stage
    lexical = hybrid.lexical_scorer(data)
    test_choice = dict(weights=[1.0, 0.4], fusions=[FUSIONS[0]])
    sides = {
        "old": lambda: (old_metrics_by_choice((val_q, items), val, "validation", cfg, hybrid.WEIGHTS, lexical, FUSIONS),
                        old_metrics_by_choice((test_q, items), data, "test", cfg, lexical=lexical, **test_choice)),
        "new": lambda: (hybrid.metrics_by_choice((val_q, items), val, "validation", cfg, lexical=lexical),
                        hybrid.metrics_by_choice((test_q, items), data, "test", cfg, lexical=lexical,
                                                 dense_ranks=dense, **test_choice))}
    seconds, results = {}, {}
    for name, side in sides.items():
        started = time.perf_counter()
        results[name] = side()
        seconds[name] = time.perf_counter() - started
        print(f"{name}: {seconds[name]:.1f}s", flush=True)
    started = time.perf_counter()
    bm25_baseline(data, "test", cfg.eval.ks, cfg.eval.exclude_seen)
    bm25 = time.perf_counter() - started
    same = results["old"] == results["new"]
    size = f"{len(val.validation)} validation + {len(data.test)} test queries x {len(data.catalog)} items"
    print(f"bm25 baseline on the test split: {bm25:.1f}s")
    print(f"ratio old/new at {size}: {seconds['old'] / seconds['new']:.2f} (new/bm25 {seconds['new'] / bm25:.2f}; "
          f"metrics {'identical' if same else 'DIFFER'})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
