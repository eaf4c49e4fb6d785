"""Benchmark training throughput (examples/sec), every figure a ratio measured side by side in one run.

    .venv/bin/python bench/train_throughput.py [--preset movielens|smoke] [--steps 200] [--batch-size 256] [--quick]

Data: the preset's training split (MovieLens-100K for ``movielens``), a random
subset of ``--examples`` of it (seeded) so that encoding the texts once stays
short. Text caching, data loading and model building are *not* timed.

1. **tfrec vs a plain-TFRS reference.** tfrec's model from
   ``tfrec.models.build_model`` on tfrec's pipeline, set up exactly as
   ``trainer/task.py`` does (``TextCache`` -> ``training_features`` ->
   ``make_dataset(shuffle, repeat, drop_remainder)``, AdamW with warm-up/decay
   from ``tfrec.training.make_optimizer``, ``compile(steps_per_execution)``,
   ``fit``), against :class:`ReferenceModel` below: the same architecture
   written from scratch the way a TFRS tutorial user would (a ``tfrs.Model``
   whose ``compute_loss`` calls a query model and an item model,
   ``tfrs.tasks.Retrieval`` with the same temperature / logQ / accidental-hit
   settings, AdamW, ``Dataset.from_tensor_slices(dict).shuffle().repeat().batch()``).
   Both read the same cached frozen-encoder text encodings. Prints
   ``ratio tfrec/tfrs_reference: X`` (tfrec examples/sec / reference examples/sec).
2. **Frozen encoder, cached vs uncached.** The same tfrec model trained on
   ``*_text_encoding`` features from the ``TextCache`` versus on raw
   ``query_text``/``item_text`` strings, running the frozen BERT forward pass
   (in-graph tokenisation included) in every step. Prints
   ``ratio cached/uncached: Y``.

Method: the machine is noisy, so contenders are interleaved: after one
untimed warm-up chunk each (tracing), every round runs one ``fit`` chunk of
each contender (order alternating per round). A chunk is ``1 + steps`` steps:
the first (new iterator, shuffle-buffer fill) is left out and every other step
is timed from the end of the previous step to its own end by a callback (Keras
loop overhead included). The uncached contender's steps take seconds, so its
chunks are just ``steps`` long and the first step is timed from its begin.
A chunk's rate is batch / its median step time; a printed ratio is the median
over rounds of the per-round ratio of chunk rates (paired in time, so load
that drifts between rounds cancels). Chunks are short and rounds many (other
processes' bursts last about as long as a chunk, and one slowed chunk skews its
round's ratio by 2x or more on a loaded machine; the median over many rounds
shrugs that off; re-creating the iterator per chunk was checked not to favour
either side). The absolute examples/sec (batch /
median step time over all rounds) are indicative only. Also printed: the
per-round spread, the ratio of the pooled rates, and the ratio of examples per
process-CPU-second (all threads; other processes' load disturbs it much less
than wall time, but it counts parallel threads' work, so for the multi-threaded
BERT pass it is not a speed ratio). Epoch-end work of a real run (validation,
checkpoints, TensorBoard) is not per-step and is left out for both.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfrec  # noqa: E402,F401  (must precede tensorflow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from tfrec import config as config_lib  # noqa: E402
from tfrec import training  # noqa: E402
from tfrec.data import dataset, pipeline  # noqa: E402
from tfrec.models import build_model  # noqa: E402


# ----------------------------------------------------------- plain-TFRS reference
class ReferenceModel(tfrs.Model):
    """The two-tower architecture as a TFRS tutorial user would write it.

    Query model: Dense projection head over the (cached) query text encoding.
    Item model: StringLookup+Embedding for the id, concatenated with the item
    text encoding and one StringLookup+Embedding per categorical column, then
    the same MLP widths. Both end in an L2 normalisation. The task keeps TFRS's
    default loss (summed rather than tfrec's per-example mean: same cost).
    """

    def __init__(self, item_ids, categorical_vocabularies: dict, id_dim: int, cat_dim: int, hidden_units,
                 embedding_dim: int, dropout: float, temperature: float, logq: bool, remove_accidental_hits: bool,
                 num_hard_negatives):
        super().__init__()

        def tower(name):
            layers = []
            for units in hidden_units:
                layers.append(tf.keras.layers.Dense(units, activation="gelu"))
                if dropout:
                    layers.append(tf.keras.layers.Dropout(dropout))
            layers += [tf.keras.layers.Dense(embedding_dim),
                       tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=-1))]
            return tf.keras.Sequential(layers, name=name)

        self.query_model = tower("query_model")
        self.item_model = tower("item_model")
        self.id_embedding = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=np.unique(item_ids), mask_token=None),
            tf.keras.layers.Embedding(len(np.unique(item_ids)) + 1, id_dim)]) if id_dim else None
        self.categorical = {col: tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=np.unique(vocab), mask_token=None),
            tf.keras.layers.Embedding(len(np.unique(vocab)) + 1, cat_dim)])
            for col, vocab in categorical_vocabularies.items()}
        self.logq = logq
        self.remove_accidental_hits = remove_accidental_hits
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=remove_accidental_hits,
                                         num_hard_negatives=num_hard_negatives)

    def compute_loss(self, features, training=False):
        query_embeddings = self.query_model(features["query_text_encoding"], training=training)
        parts = [features["item_text_encoding"]]
        if self.id_embedding is not None:
            parts.insert(0, self.id_embedding(features["item_id"]))
        parts += [layer(features[f"item_{col}"]) for col, layer in self.categorical.items()]
        item_embeddings = self.item_model(tf.concat(parts, axis=1), training=training)
        return self.task(query_embeddings, item_embeddings,
                         candidate_sampling_probability=features["item_probability"] if self.logq else None,
                         candidate_ids=features["item_id"] if self.remove_accidental_hits else None,
                         compute_metrics=False)


def reference_dataset(examples, catalog, item_probability, query_matrix, query_row, item_matrix, item_row,
                      batch_size, seed):
    """The plain way: numpy columns -> from_tensor_slices(dict).shuffle().repeat().batch().

    ``*_matrix`` / ``*_row``: the cached encodings (one row per distinct text) and text -> row.
    """
    position = {item: i for i, item in enumerate(catalog.item_ids)}
    pos = np.array([position[i] for i in examples.item_id])
    item_encodings = item_matrix[[item_row[t] for t in catalog.texts]]  # [num_items, hidden]
    columns = {
        "query_text_encoding": query_matrix[[query_row[t] for t in examples.query_text]],
        "item_id": np.array(catalog.item_ids)[pos],
        "item_text_encoding": item_encodings[pos],
        "item_probability": item_probability[pos],
    }
    for col, values in catalog.categorical.items():
        columns[f"item_{col}"] = np.array(values)[pos]
    ds = tf.data.Dataset.from_tensor_slices(columns)
    return ds.shuffle(len(pos), seed=seed).repeat().batch(batch_size)


# ----------------------------------------------------------------- timing harness
class StepTimer(tf.keras.callbacks.Callback):
    """Wall and process-CPU timestamps around every training step (logs stay tensors: no extra sync)."""

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True
        self.begins: list[tuple[float, float]] = []
        self.ends: list[tuple[float, float]] = []

    def on_train_begin(self, logs=None):
        self.begins, self.ends = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append((time.perf_counter(), time.process_time()))

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((time.perf_counter(), time.process_time()))


class Contender:
    """One model + dataset, run in ``fit`` chunks; keeps every timed step's wall time.

    Args:
      skip_first: leave each chunk's first step out (it makes the iterator and
        fills the shuffle buffer); the other steps are timed end to end (Keras
        loop included). Without it (slow contenders, where that set-up is
        noise) the first step is timed from its begin to its end.
    """

    def __init__(self, name: str, model: tf.keras.Model, ds: tf.data.Dataset, batch_size: int, steps: int,
                 skip_first: bool = True):
        self.name, self.model, self.ds, self.batch_size, self.steps = name, model, ds, batch_size, steps
        self.skip_first = skip_first
        self.step_seconds: list[float] = []  # wall, every timed step of every round
        self.cpu_seconds = 0.0  # process CPU time (all threads) over the timed steps
        self.timed_steps = 0
        self.timer = StepTimer()

    def chunk(self, steps: int | None = None, record: bool = True) -> float:
        """One fit call; returns this chunk's examples/sec (from its median step time)."""
        steps = steps or self.steps
        self.model.fit(self.ds, epochs=1, steps_per_epoch=steps + self.skip_first, verbose=0, callbacks=[self.timer])
        b, e = self.timer.begins, self.timer.ends
        marks = e if self.skip_first else [b[0]] + e
        wall = [marks[i][0] - marks[i - 1][0] for i in range(1, len(marks))]
        if record:
            self.step_seconds += wall
            self.cpu_seconds += marks[-1][1] - marks[0][1]
            self.timed_steps += steps
        return self.batch_size / statistics.median(wall)

    def rate(self) -> float:
        """examples/sec: batch / median wall time of all timed steps."""
        return self.batch_size / statistics.median(self.step_seconds)

    def cpu_rate(self) -> float:
        """examples per process-CPU-second (all threads)."""
        return self.timed_steps * self.batch_size / max(self.cpu_seconds, 1e-9)


def interleave(a: Contender, b: Contender, rounds: int) -> list[float]:
    """One untimed warm-up chunk each, then ``rounds`` rounds (A,B / B,A alternating).

    Returns the per-round ratios of chunk rates A/B (their spread shows the noise).
    """
    for c in (a, b):
        c.chunk(max(1, min(c.steps, 5)), record=False)  # tracing
    ratios = []
    for r in range(rounds):
        rate = {c.name: c.chunk() for c in ((a, b) if r % 2 == 0 else (b, a))}
        ratios.append(rate[a.name] / rate[b.name])
    return ratios


def report(a: Contender, b: Contender, ratios: list[float], digits: int) -> None:
    for c in (a, b):
        print(f"{c.name} examples/sec (indicative): {c.rate():.{0 if c.rate() >= 100 else 1}f}")
    print(f"ratio {a.name}/{b.name}: {statistics.median(ratios):.{digits}f}")
    print(f"  ({len(ratios)} interleaved rounds, {a.timed_steps} + {b.timed_steps} timed steps; per-round ratio "
          f"min {min(ratios):.{digits}f}, max {max(ratios):.{digits}f}; ratio of the pooled median step times "
          f"{a.rate() / b.rate():.{digits}f}; of examples per process-CPU-second "
          f"{a.cpu_rate() / b.cpu_rate():.{digits}f})", flush=True)


# ------------------------------------------------------------------------ set-up
def new_model(cfg, catalog):
    tf.keras.utils.set_random_seed(cfg.train.seed)
    return build_model(cfg, catalog)


def tfrec_contender(model, cfg, catalog, examples, item_probability, query_cache, item_cache, name, steps):
    """tfrec's pipeline, optimiser and compile for ``model``, as ``trainer/task.py`` ``train()`` sets them up."""
    features = pipeline.training_features(examples, catalog, item_probability, query_cache, item_cache)
    batch = cfg.train.batch_size
    steps_per_epoch = math.ceil(len(examples) / batch)
    ds = pipeline.make_dataset(features, batch, shuffle=True, seed=cfg.train.seed,
                               drop_remainder=len(examples) >= 2 * batch, repeat=True)
    head_opt = training.make_optimizer(cfg.train.learning_rate, steps_per_epoch * cfg.train.epochs,
                                       cfg.train.warmup_fraction, cfg.train.weight_decay, "head_adamw")
    # Default runtime on CPU: no mixed precision, no XLA, so no host-side tokenisation (train() branches on these).
    model.compile(optimizer=head_opt, steps_per_execution=cfg.train.steps_per_execution,
                  jit_compile=cfg.train.jit_compile)
    sample = next(iter(pipeline.make_dataset(features, 2)))
    model.query_tower(sample), model.item_tower(sample)
    return Contender(name, model, ds, batch, steps), model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="movielens", choices=["movielens", "smoke"])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per chunk of the cached contenders (default 10)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds, tfrec vs reference (default 61, --quick 31)")
    parser.add_argument("--uncached-steps", type=int, default=None,
                        help="timed steps per chunk of the uncached contender (default 2, --quick 1)")
    parser.add_argument("--uncached-rounds", type=int, default=None,
                        help="interleaved rounds, cached vs uncached (default 3, --quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's train.batch_size")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples used (random subset; default 8192, --quick 1024)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (under ~2 minutes on 2 cores)")
    args = parser.parse_args(argv)
    quick = args.quick
    steps = args.steps or 10
    rounds = args.rounds or (31 if quick else 61)
    uncached_steps = args.uncached_steps or (1 if quick else 2)
    uncached_rounds = args.uncached_rounds or (2 if quick else 3)
    n_examples = args.examples or (1024 if quick else 8192)

    warnings.filterwarnings("ignore")
    for noisy in ("tensorflow", "absl", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.time()

    # The encoder must be frozen for caching (the smoke preset trains one layer).
    sets = ["model.query_encoder.trainable_layers=0"]
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    cfg = config_lib.build(args.preset, sets=sets)
    batch = cfg.train.batch_size
    data = dataset.load(cfg.data)
    rng = np.random.default_rng(cfg.train.seed)
    n = min(n_examples, len(data.train))
    examples = data.train.take(np.sort(rng.choice(len(data.train), size=n, replace=False)))
    item_probability = data.item_probability()  # from the whole training split, as train() does

    # --- untimed: encode the texts once, as train() does --------------------
    tfrec_model = new_model(cfg, data.catalog)
    query_encoder, item_encoder = tfrec_model.query_tower.encoder, tfrec_model.item_tower.text_encoder
    t0 = time.time()
    query_cache = pipeline.TextCache(examples.query_text, query_encoder.encode_texts)
    item_cache = pipeline.TextCache(data.catalog.texts, item_encoder.encode_texts)
    cache_seconds = time.time() - t0

    q = cfg.model.query_encoder
    print(f"hardware: os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
          f"TensorFlow {tf.__version__}, TFRS {tfrs.__version__}")
    print(f"data: preset {args.preset}: {n} of {len(data.train)} training examples (random subset, seed "
          f"{cfg.train.seed}), {len(data.catalog)} items; frozen {q.checkpoint} (hidden "
          f"{query_encoder.hidden_size}, max_length {q.max_length}); {len(query_cache.texts)} query + "
          f"{len(item_cache.texts)} item texts cached in {cache_seconds:.0f}s (not timed); batch {batch}", flush=True)

    # --- 1. tfrec vs plain TFRS ----------------------------------------------
    tfrec_c, _ = tfrec_contender(tfrec_model, cfg, data.catalog, examples, item_probability, query_cache,
                                 item_cache, "tfrec", steps)
    m, r = cfg.model, cfg.retrieval
    tf.keras.utils.set_random_seed(cfg.train.seed)
    ref_model = ReferenceModel(data.catalog.item_ids, data.catalog.categorical, m.item_id_embedding_dim,
                               m.categorical_embedding_dim, m.hidden_units, m.embedding_dim, m.dropout,
                               r.temperature, r.logq_correction, r.remove_accidental_hits, r.num_hard_negatives)
    ref_model.compile(optimizer=tf.keras.optimizers.AdamW(cfg.train.learning_rate,
                                                          weight_decay=cfg.train.weight_decay))
    ref_ds = reference_dataset(examples, data.catalog, item_probability, query_cache.matrix, query_cache.row,
                               item_cache.matrix, item_cache.row, batch, cfg.train.seed)
    ref_c = Contender("tfrs_reference", ref_model, ref_ds, batch, steps)
    print(f"[1] tfrec vs plain-TFRS reference, cached encodings, {rounds} rounds x {steps} steps:", flush=True)
    report(tfrec_c, ref_c, interleave(tfrec_c, ref_c, rounds), digits=3)

    # --- 2. cached vs uncached frozen encoder ---------------------------------
    cached_c = Contender("cached", tfrec_model, tfrec_c.ds, batch, steps)
    uncached_c, _ = tfrec_contender(new_model(cfg, data.catalog), cfg, data.catalog, examples, item_probability,
                                    None, None, "uncached", uncached_steps)
    uncached_c.skip_first = False
    print(f"[2] tfrec frozen encoder, cached vs uncached (BERT forward pass every step), {uncached_rounds} rounds x "
          f"{steps} / {uncached_steps} steps:", flush=True)
    report(cached_c, uncached_c, interleave(cached_c, uncached_c, uncached_rounds), digits=1)
    print(f"total {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
