"""Quality experiments on the demo's protocol: history-as-items models against an honest id_sequence baseline.

    python bench/quality.py [--history 20] [--encoder attention] [--negatives full] [--epochs 10] ...
    python bench/quality.py --throughput   # training examples/s per negatives mode, ratios to in_batch

Defaults are the movielens preset's values (seen items excluded from the ranking, AdamW with warm-up).

Data and split come from the movielens preset through ``tfrec.run.load_data``, as training reads them (leave-last,
full catalog, 943 test users) and metrics from ``tfrec.evaluate``, so the figures are on
exactly the split and metrics of ``eval.json``. Both contenders use the same history window,
encoder, negatives, epochs and early stopping (best validation recall@10); they differ only in
the item tower: ``model`` has id + cached MiniLM text + genres/year, ``id_sequence`` ids only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import tfrec  # noqa: F401  (environment first)
import tensorflow as tf

from tfrec import config as config_lib
from tfrec import early_stopping, evaluate, training
from tfrec import run as run_lib
from tfrec.data import pipeline
from tfrec.encoders.history import make_history_encoder
from tfrec.encoders.text import BertTextEncoder
from tfrec.models import TwoTowerModel
from tfrec.tasks import RetrievalTask
from tfrec.towers import ItemTower, QueryTower


def item_text_cache(cfg, catalog, path: str) -> pipeline.TextCache:
    q = cfg.model.query_encoder
    encoder = BertTextEncoder(q.checkpoint, q.max_length, q.pooling, 0, name="item_encoder")
    cache = pipeline.TextCache.__new__(pipeline.TextCache)
    cache.texts = list(dict.fromkeys(catalog.texts))
    cache.row = {t: i for i, t in enumerate(cache.texts)}
    if os.path.exists(path):
        cache.matrix = np.load(path)
    else:
        cache.matrix = encoder.encode_texts(cache.texts)
        np.save(path, cache.matrix)
    return cache, encoder


def build(args, data, with_text: bool, cache, encoder, seed: int):
    """The model (or the id_sequence baseline without text) and its shuffled training batches."""
    tf.keras.utils.set_random_seed(seed)
    catalog = data.catalog
    length = args.history
    cats = {c: sorted(set(v)) for c, v in catalog.categorical.items()} if with_text else {}
    item_tower = ItemTower(catalog.item_ids, args.id_dim, encoder if with_text else None, cats, 8,
                           args.hidden, args.dim, args.dropout, name="item_tower")
    all_rows = np.arange(len(catalog))
    table = pipeline.item_features(catalog, all_rows, cache if with_text else None)
    if not with_text:
        table = {"item_id": table["item_id"]}
    item_tower.set_catalog(table)
    history_encoder = make_history_encoder(args.encoder, length, args.dim, args.dropout)
    query_tower = QueryTower(None, args.query_hidden, args.dim, args.dropout, history_encoder, length,
                             name="query_tower")
    query_tower.attach_item_tower(item_tower)
    task = RetrievalTask(args.temperature, negatives=args.negatives, num_sampled=args.num_sampled,
                         sampling=args.sampling, name="retrieval")
    task.set_catalog_probability(data.item_probability())
    model = TwoTowerModel(query_tower, item_tower, task)
    if args.adamw:  # the trainer's optimiser: AdamW, warm-up and linear decay over all epochs
        steps = len(data.train) // args.batch
        model.compile(optimizer=training.make_optimizer(args.lr, steps * args.epochs, 0.05, 1e-4, "adamw"))
    else:
        model.compile(optimizer=tf.keras.optimizers.Adam(args.lr))

    def feats(split):
        ex = getattr(data, split)
        f = pipeline.training_features(ex, catalog, data.item_probability(), None, cache if with_text else None,
                                       query_text=False)
        f["history_item_ids"] = f["history_item_ids"][:, :length]
        if not with_text:
            f = {k: v for k, v in f.items() if k in ("history_item_ids", "item_id", "item_position",
                                                      "item_probability")}
        return f

    train = pipeline.make_dataset(feats("train"), args.batch, shuffle=True, seed=seed, drop_remainder=True)
    return model, train


def run(args, data, with_text: bool, cache, encoder, seed: int) -> dict:
    model, train = build(args, data, with_text, cache, encoder, seed)
    query_tower, item_tower, length = model.query_tower, model.item_tower, args.history
    all_rows = np.arange(len(data.catalog))
    embed_q = tf.function(lambda h: query_tower({"history_item_ids": h}))
    embed_items = tf.function(lambda: item_tower.embed_rows(tf.constant(all_rows)))

    def embeddings(split):
        hist = getattr(data, split).history[:, :length]
        return embed_q(tf.constant(hist)).numpy(), embed_items().numpy()

    best, rule = None, early_stopping.EarlyStopping(args.patience)
    for epoch in range(args.epochs):
        t = time.time()
        model.fit(train, epochs=1, verbose=0)
        q, items = embeddings("validation")
        val = evaluate.evaluate_embeddings(q, items, data, "validation", [10], args.exclude_seen)["recall@10"]
        print(f"  {'model' if with_text else 'id_sequence'} epoch {epoch + 1} val recall@10={val:.4f} "
              f"({time.time() - t:.1f}s)", flush=True)
        decision = rule.update(epoch, val)
        if decision == early_stopping.IMPROVED:
            best = [w.copy() for w in model.get_weights()]
        elif decision == early_stopping.STOP:
            break
    model.set_weights(best)
    q, items = embeddings("test")
    out = evaluate.evaluate_embeddings(q, items, data, "test", [10, 100], args.exclude_seen)
    other = evaluate.evaluate_embeddings(q, items, data, "test", [10], not args.exclude_seen)
    out["other_exclusion_recall@10"], out["other_exclusion_ndcg@10"] = other["recall@10"], other["ndcg@10"]
    out["best_epoch"] = rule.best_epoch + 1
    return out


def throughput(args, data, cache, encoder) -> None:
    """Training examples/s of the model under each negatives mode, interleaved rounds, same batches.

    Prints one line per mode and ``ratio <mode>/in_batch`` (median over rounds of the per-round ratio).
    """
    modes = ["in_batch", "sampled", "mixed", "full"]
    models, iterators = {}, {}
    for mode in modes:
        args.negatives = mode
        model, train = build(args, data, True, cache, encoder, args.seed)
        models[mode], iterators[mode] = model, iter(train.repeat())
        step = tf.function(model.train_step)
        for _ in range(3):  # tracing and warm-up, not timed
            step(next(iterators[mode]))
        models[mode] = step
    rates = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            batches = [next(iterators[mode]) for _ in range(args.steps)]
            started = time.perf_counter()
            for b in batches:
                out = models[mode](b)
            float(out["loss"])  # wait for the last step
            rates[mode].append(args.batch * args.steps / (time.perf_counter() - started))
    for mode in modes:
        ratio = np.median(np.array(rates[mode]) / np.array(rates["in_batch"]))
        print(f"negatives {mode:<9} {np.median(rates[mode]):8.0f} examples/s   ratio {mode}/in_batch: {ratio:.2f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--encoder", default="attention")
    p.add_argument("--negatives", default="full")
    p.add_argument("--num-sampled", type=int, default=256)
    p.add_argument("--sampling", default="uniform")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--id-dim", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="*", default=[256])
    p.add_argument("--query-hidden", type=int, nargs="*", default=[256])
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--include-seen", dest="exclude_seen", action="store_false")
    p.add_argument("--adam", dest="adamw", action="store_false", help="constant-rate Adam instead of the trainer's AdamW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["model", "id_sequence"], default=None)
    p.add_argument("--throughput", action="store_true", help="examples/s per negatives mode instead of quality")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    cfg = config_lib.build("movielens", sets=[f"data.interactions.query_history_items={args.history}"])
    data = run_lib.load_data(cfg, tempfile.gettempdir())  # as fit reads it
    cache, encoder = item_text_cache(cfg, data.catalog, "/tmp/quality_item_text.npy")
    if args.throughput:
        return throughput(args, data, cache, encoder)
    results = {"popularity": evaluate.popularity_baseline(data, "test", [10, 100], args.exclude_seen)}
    started = time.time()
    for name, with_text in (("model", True), ("id_sequence", False)):
        if args.only in (None, name):
            t = time.time()
            results[name] = run(args, data, with_text, cache, encoder, args.seed)
            results[name]["seconds"] = round(time.time() - t, 1)
    print(vars(args))
    for name, r in results.items():
        print(f"{name:<12} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"total {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
