"""Benchmark training speed, every figure a ratio measured side by side in one run.

    .venv/bin/python bench/train_throughput.py [--preset movielens|smoke] [--quick]
        [--sections reference,cache,xla_precision,finetune,input,negatives] [--help for the sizes]

Data: a seeded random subset (``--examples``) of the preset's training split
(MovieLens-100K for ``movielens``, MiniLM-L6 as the encoder). Every contender
is built, compiled and fed the way :func:`tfrec.run.train` does it
(:func:`tfrec.models.build_model`, :func:`tfrec.training.compile_model`,
``pipeline.training_features`` -> ``make_dataset(shuffle, repeat)``, the
host-side tokenisation of :func:`tfrec.towers.host_features` when XLA is on),
with config overrides as the only difference. Encoding texts into the frozen
encoder's cache, loading data and building models are not timed.

Sections (``--sections``; each prints its ``ratio`` lines). Sections 1-5 run a
text query tower on in-batch negatives (the architecture of the reference; a
preset whose query is the user's history reads its history titles' text as
the query there); section 6 runs the preset's own model.

1. ``reference``: tfrec against :class:`ReferenceModel`, the same two-tower
   architecture written from scratch the way a TFRS tutorial user would (a
   ``tfrs.Model`` calling a query and an item model, ``tfrs.tasks.Retrieval``
   with the same temperature / logQ / accidental-hit settings, AdamW,
   ``from_tensor_slices(dict).shuffle().repeat().batch()``), both on the same
   cached frozen-encoder encodings: ``ratio tfrec/tfrs_reference: X``.
2. ``cache``: the frozen encoder's outputs from the ``TextCache`` against the
   same model running BERT (tokenisation included) on raw text in every step:
   ``ratio cached/uncached: Y``.
3. ``xla_precision``: raw text tokenised on the host and BERT running every
   step (the preset's ``trainable_layers``), as float32 without XLA (the
   baseline), with ``train.jit_compile=true``, and under
   ``train.mixed_precision=<--precision>`` (default ``mixed_bfloat16``):
   ``ratio xla_on/xla_off: X`` and ``ratio mixed_bfloat16/float32: Y``
   (> 1 = faster than the baseline). Warm-up (tracing, XLA compilation) times
   are printed, not counted.
4. ``finetune``: the encoder frozen (cached encodings, as the trainer does),
   with LoRA adapters (``model.query_encoder.lora_rank``, encoder learning rate
   ``--lora-learning-rate``) and fully fine-tuned (every transformer layer
   trains, the preset's ``train.encoder_learning_rate``), on the same examples,
   batch, seed and number of steps. Prints trainable parameters (all, and the
   encoder's), step time, validation recall@10 after those steps (a short,
   equal budget, not a converged comparison), and
   ``ratio lora/frozen: X``, ``ratio full/frozen: Y``, ``ratio full/lora: Z``
   (examples/sec; < 1 = slower).
5. ``input``: the same examples and cached-encoder model fed from memory (the
   default) and streamed from 8 TFRecord shards written for the run
   (``data.interactions.streaming``, :func:`tfrec.data.stream.make_dataset`):
   ``ratio streamed/in_memory: X`` for training, and
   ``ratio input_only streamed/in_memory: Y`` for the input pipelines alone.
6. ``negatives``: the preset's model (cached encodings) under each
   ``retrieval.negatives`` mode on the same examples, ``in_batch`` the
   baseline: examples/sec per mode and ``ratio sampled/in_batch: X``,
   ``ratio mixed/in_batch: Y``, ``ratio full/in_batch: Z``.

Method: the machine is noisy, so the contenders of a section are interleaved:
after one untimed warm-up chunk each, every round runs one ``fit`` chunk of
each contender, in an order rotated per round. A chunk's first step (new
iterator, shuffle-buffer fill) is left out when steps are fast; every other
step is timed from the end of the previous step to its own end (Keras loop
overhead included). When steps take seconds (BERT in the step), the first step
is timed from its begin instead and all steps count. A chunk's rate is batch /
its median step time; a printed ratio is the median over rounds of the
per-round ratio of chunk rates (paired in time, so load that drifts between
rounds cancels; one slowed chunk skews only its round). Also printed: the
per-round spread, the ratio of pooled rates and, for sections 1 and 2, of
examples per process-CPU-second (all threads; less disturbed by other
processes, but not a speed ratio for multi-threaded BERT work). Absolute rates
are indicative only. Epoch-end work of a real run (validation, checkpoints,
TensorBoard) is left out for all.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfrec  # noqa: E402,F401  (must precede tensorflow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from tfrec import config as config_lib  # noqa: E402
from tfrec import evaluate, runtime, training  # noqa: E402
from tfrec import run as run_lib  # noqa: E402
from tfrec.data import pipeline, stream, to_tfrecord  # noqa: E402
from tfrec.models import build_model  # noqa: E402
from tfrec.tasks import NEGATIVES  # noqa: E402
from tfrec.towers import host_features  # noqa: E402

SECTIONS = ("reference", "cache", "xla_precision", "finetune", "input", "negatives")


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
        fills the shuffle buffer); the other steps are timed end to end. Without
        it (slow steps, where that set-up is noise) the first step is timed from
        its begin and every step counts.
    """

    def __init__(self, name: str, model: tf.keras.Model, ds: tf.data.Dataset, batch_size: int, steps: int,
                 skip_first: bool = True):
        self.name, self.model, self.ds, self.batch_size, self.steps = name, model, ds, batch_size, steps
        self.skip_first = skip_first
        self.step_seconds: list[float] = []  # wall, every timed step of every round
        self.cpu_seconds = 0.0  # process CPU time (all threads) over the timed steps
        self.timed_steps = 0
        self.trained_steps = 0  # every step run, timed or not
        self.warmup_seconds = 0.0
        self.timer = StepTimer()

    def chunk(self, steps: int | None = None, record: bool = True) -> float:
        """One fit call; returns this chunk's examples/sec (from its median step time)."""
        steps = steps or self.steps
        started = time.perf_counter()
        self.model.fit(self.ds, epochs=1, steps_per_epoch=steps + self.skip_first, verbose=0, callbacks=[self.timer])
        self.trained_steps += steps + self.skip_first
        b, e = self.timer.begins, self.timer.ends
        marks = e if self.skip_first else [b[0]] + e
        wall = [marks[i][0] - marks[i - 1][0] for i in range(1, len(marks))]
        if record:
            self.step_seconds += wall
            self.cpu_seconds += marks[-1][1] - marks[0][1]
            self.timed_steps += steps
        else:
            self.warmup_seconds = time.perf_counter() - started
        return self.batch_size / statistics.median(wall)

    def rate(self) -> float:
        """examples/sec: batch / median wall time of all timed steps."""
        return self.batch_size / statistics.median(self.step_seconds)

    def cpu_rate(self) -> float:
        """examples per process-CPU-second (all threads)."""
        return self.timed_steps * self.batch_size / max(self.cpu_seconds, 1e-9)


def warm_up_steps(steps: int) -> int:
    """Steps of the untimed warm-up chunk of a contender whose chunks are ``steps`` long."""
    return max(1, min(steps, 5))


def interleave(baseline: Contender, others: list[Contender], rounds: int) -> dict[str, list[float]]:
    """One untimed warm-up chunk each, then ``rounds`` rounds, the order rotated per round.

    Returns, per other contender, its per-round ratios of chunk rates to the baseline's.
    """
    contenders = [baseline, *others]
    for c in contenders:
        c.chunk(warm_up_steps(c.steps), record=False)  # tracing (and XLA compilation)
    ratios: dict[str, list[float]] = {c.name: [] for c in others}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        rate = {c.name: c.chunk() for c in order}
        for c in others:
            ratios[c.name].append(rate[c.name] / rate[baseline.name])
    return ratios


def report(c: Contender, baseline: Contender, ratios: list[float], digits: int, label: str | None = None,
           cpu: bool = True) -> None:
    """The headline ``ratio <label>: X`` line (median per-round ratio) and its spread."""
    print(f"ratio {label or f'{c.name}/{baseline.name}'}: {statistics.median(ratios):.{digits}f}")
    cpu_part = f"; of examples per process-CPU-second {c.cpu_rate() / baseline.cpu_rate():.{digits}f}" if cpu else ""
    print(f"  ({len(ratios)} interleaved rounds, {c.timed_steps} + {baseline.timed_steps} timed steps; per-round "
          f"ratio min {min(ratios):.{digits}f}, max {max(ratios):.{digits}f}; ratio of the pooled median step "
          f"times {c.rate() / baseline.rate():.{digits}f}{cpu_part})", flush=True)


def print_rates(*contenders: Contender) -> None:
    for c in contenders:
        print(f"{c.name} examples/sec (indicative): {c.rate():.{0 if c.rate() >= 100 else 1}f}")


# ------------------------------------------------------------------------ set-up
def trainer_contender(name: str, cfg, data, examples, steps: int, total_steps: int, query_cache=None,
                      item_cache=None, host: bool = False, skip_first: bool = True, streamed=None) -> Contender:
    """A model built, compiled and fed as ``train()`` does for ``cfg`` (default strategy).

    Args:
      cfg: the resolved config (the contender's overrides applied).
      examples: the training examples; ``query_cache`` / ``item_cache``: frozen
        encoder outputs (None: raw text, BERT in every step).
      total_steps: the learning-rate schedule's length.
      host: tokenise and look ids up in ``tf.data`` even without XLA.
      streamed: a :class:`tfrec.data.stream.StreamInfo` of ``examples`` written as TFRecord shards: read them
        with ``tfrec.data.stream.make_dataset`` (as ``data.interactions.streaming`` does) instead of from memory.
    """
    tf.keras.utils.set_random_seed(cfg.train.seed)  # the same initial weights for every contender
    model = run_lib.build_model(cfg, data)  # under train.mixed_precision, as fit builds it
    # as tfrec.run.build_features: catalog negatives and history items need the catalog
    model.set_catalog(pipeline.item_features(data.catalog, np.arange(len(data.catalog)), item_cache))
    training.compile_model(model, cfg, total_steps)
    features = pipeline.training_features(examples, data.catalog, data.item_probability(), query_cache, item_cache,
                                          model.query_tower.encoder is not None)
    batch = cfg.train.batch_size
    if streamed is not None:
        ds = stream.make_dataset(streamed, data.catalog, data.item_probability(), batch, cfg.train.seed,
                                 query_cache=query_cache, item_cache=item_cache)
    else:
        ds = pipeline.make_dataset(features, batch, shuffle=True, seed=cfg.train.seed,
                                   drop_remainder=len(examples) >= 2 * batch, repeat=True)
    sample = next(iter(pipeline.make_dataset(features, 2)))
    model.query_tower(sample), model.item_tower(sample)
    for encoder in {id(e): e for e in (model.query_tower.encoder, model.item_tower.text_encoder) if e}.values():
        encoder(tf.constant(["a"]))  # built (train() builds it by encoding its cache with it)
    if host or runtime.host_preprocessing(tf.distribute.get_strategy(), cfg.train.jit_compile):
        ds = ds.map(lambda f: host_features(model.query_tower, model.item_tower, f),
                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return Contender(name, model, ds, batch, steps, skip_first)


def variant(cfg, *sets: str):
    """``cfg`` with dotted overrides applied and validated (the trainer's ``--set``)."""
    return config_lib.override(cfg, list(sets))


def text_query(cfg):
    """``cfg`` with a text query tower (a history preset's query: its history titles' text) and in-batch
    negatives: the architecture of :class:`ReferenceModel`."""
    history = ["model.history_encoder=text"] if cfg.data.interactions.query_history_items else []
    return variant(cfg, "retrieval.negatives=in_batch", *history)


def validation_recall(model, cfg, data, query_cache, item_cache) -> float:
    """Full-catalog validation recall@10 of the model's current weights."""
    queries = pipeline.query_inputs(data.validation, query_cache, model.query_tower)
    items = pipeline.item_features(data.catalog, np.arange(len(data.catalog)), item_cache)
    q, i = evaluate.embed(model.query_tower, queries), evaluate.embed(model.item_tower, items)
    return evaluate.evaluate_embeddings(q, i, data, "validation", [10], cfg.eval.exclude_seen)["recall@10"]


def trainable_parameters(model) -> tuple[int, int]:
    """(all trainable parameters, the encoders' share)."""
    encoder_ids = model._encoder_variable_ids()
    sizes = [(int(np.prod(v.shape)), id(v) in encoder_ids) for v in model.trainable_variables]
    return sum(n for n, _ in sizes), sum(n for n, enc in sizes if enc)


# ---------------------------------------------------------------------- sections
def section_reference(cfg, data, examples, caches, steps, rounds) -> Contender:
    tfrec_c = trainer_contender("tfrec", cfg, data, examples, steps, _schedule_steps(cfg, examples), *caches)
    m, r = cfg.model, cfg.retrieval
    query_cache, item_cache = caches
    tf.keras.utils.set_random_seed(cfg.train.seed)
    ref_model = ReferenceModel(data.catalog.item_ids, data.catalog.categorical, m.item_id_embedding_dim,
                               m.categorical_embedding_dim, m.hidden_units, m.embedding_dim, m.dropout,
                               r.temperature, r.logq_correction, r.remove_accidental_hits, r.num_hard_negatives)
    ref_model.compile(optimizer=tf.keras.optimizers.AdamW(cfg.train.learning_rate,
                                                          weight_decay=cfg.train.weight_decay))
    ref_ds = reference_dataset(examples, data.catalog, data.item_probability(), query_cache.matrix,
                               query_cache.row, item_cache.matrix, item_cache.row, cfg.train.batch_size,
                               cfg.train.seed)
    ref_c = Contender("tfrs_reference", ref_model, ref_ds, cfg.train.batch_size, steps)
    print(f"[1] tfrec vs plain-TFRS reference, cached encodings, batch {cfg.train.batch_size}, {rounds} rounds x "
          f"{steps} steps:", flush=True)
    ratios = interleave(ref_c, [tfrec_c], rounds)
    print_rates(tfrec_c, ref_c)
    report(tfrec_c, ref_c, ratios["tfrec"], digits=3)
    return tfrec_c


def section_negatives(cfg, data, examples, caches, steps, rounds) -> None:
    """The preset's model under each ``retrieval.negatives`` mode, in_batch the baseline (cached encodings)."""
    total = _schedule_steps(cfg, examples)
    modes = {mode: trainer_contender(mode, variant(cfg, f"retrieval.negatives={mode}"), data, examples, steps,
                                     total, *caches) for mode in NEGATIVES}
    r = cfg.retrieval
    print(f"[6] negatives modes (retrieval.negatives; sampled and mixed draw {r.num_sampled} {r.sampling}, full "
          f"scores all {len(data.catalog)} items), cached encodings, batch {cfg.train.batch_size}, {rounds} rounds "
          f"x {steps} steps:", flush=True)
    baseline = modes["in_batch"]
    ratios = interleave(baseline, [modes[m] for m in NEGATIVES[1:]], rounds)
    print_rates(*modes.values())
    for mode in NEGATIVES[1:]:
        report(modes[mode], baseline, ratios[mode], digits=2)


def section_cache(cfg, data, examples, caches, steps, uncached_steps, rounds) -> None:
    total = _schedule_steps(cfg, examples)
    cached_c = trainer_contender("cached", cfg, data, examples, steps, total, *caches)
    uncached_c = trainer_contender("uncached", cfg, data, examples, uncached_steps, total, skip_first=False)
    print(f"[2] frozen encoder, cached vs uncached (BERT forward pass every step), batch {cfg.train.batch_size}, "
          f"{rounds} rounds x {steps} / {uncached_steps} steps:", flush=True)
    ratios = interleave(uncached_c, [cached_c], rounds)
    print_rates(cached_c, uncached_c)
    report(cached_c, uncached_c, ratios["cached"], digits=1)


def section_xla_precision(cfg, data, examples, precision, steps, rounds) -> None:
    total = 10_000
    base = trainer_contender("float32", cfg, data, examples, steps, total, host=True)
    xla = trainer_contender("xla", variant(cfg, "train.jit_compile=true"), data, examples, steps, total)
    mixed = trainer_contender(precision, variant(cfg, f"train.mixed_precision={precision}"), data, examples, steps,
                              total, host=True)
    q = cfg.model.query_encoder
    print(f"[3] XLA and mixed precision: raw text tokenised on the host, BERT every step (trainable_layers "
          f"{q.trainable_layers}, max_length {q.max_length}), batch {cfg.train.batch_size}, {rounds} rounds x "
          f"{steps} steps:", flush=True)
    ratios = interleave(base, [xla, mixed], rounds)
    for c in (base, xla, mixed):
        print(f"  warm-up {c.name} (tracing{', XLA compilation' if c is xla else ''}): {c.warmup_seconds:.1f}s")
    print_rates(base, xla, mixed)
    report(xla, base, ratios["xla"], digits=2, label="xla_on/xla_off", cpu=False)
    report(mixed, base, ratios[precision], digits=2, label=f"{precision}/float32", cpu=False)


def section_finetune(cfg, data, examples, caches, num_layers, lora_rank, lora_lr, steps, rounds) -> None:
    total = warm_up_steps(steps) + rounds * steps  # the warm-up chunk trains too: every mode runs this many
    modes = {
        "frozen": variant(cfg, "model.query_encoder.trainable_layers=0", "model.query_encoder.lora_rank=0"),
        "lora": variant(cfg, "model.query_encoder.trainable_layers=0", f"model.query_encoder.lora_rank={lora_rank}",
                        f"train.encoder_learning_rate={lora_lr}"),
        "full": variant(cfg, f"model.query_encoder.trainable_layers={num_layers}", "model.query_encoder.lora_rank=0"),
    }
    contenders = {name: trainer_contender(name, mcfg, data, examples, steps, total,
                                          *(caches if name == "frozen" else (None, None)), skip_first=False)
                  for name, mcfg in modes.items()}
    print(f"[4] fine-tuning modes: {len(examples)} examples, batch {cfg.train.batch_size}, {total} steps each "
          f"(warm-up chunk of {warm_up_steps(steps)} + {rounds} rounds x {steps} steps, interleaved); LoRA rank "
          f"{lora_rank} at encoder learning rate {lora_lr}, full fine-tuning of all {num_layers} layers at "
          f"{modes['full'].train.encoder_learning_rate}:", flush=True)
    ratios = interleave(contenders["frozen"], [contenders["lora"], contenders["full"]], rounds)
    # full vs lora, paired per round: (full/frozen) / (lora/frozen)
    ratios["full/lora"] = [f / l for f, l in zip(ratios["full"], ratios["lora"])]
    print(f"  {'mode':<7} {'trainable params':>16} {'of them encoder':>16} {'ms/step':>9} {'val recall@10':>14}")
    for name, c in contenders.items():
        assert c.trained_steps == total, (name, c.trained_steps, total)
        params, encoder = trainable_parameters(c.model)
        recall = validation_recall(c.model, modes[name], data, *(caches if name == "frozen" else (None, None)))
        print(f"  {name:<7} {params:>16,} {encoder:>16,} {1000 * c.batch_size / c.rate():>9.1f} {recall:>14.4f}",
              flush=True)
    for name in ("lora", "full"):
        report(contenders[name], contenders["frozen"], ratios[name], digits=3, cpu=False)
    full, lora = contenders["full"], contenders["lora"]
    r = ratios["full/lora"]
    print(f"ratio full/lora: {statistics.median(r):.3f}")
    print(f"  ({len(r)} interleaved rounds; per-round min {min(r):.3f}, max {max(r):.3f}; "
          f"pooled {full.rate() / lora.rate():.3f})", flush=True)


def section_input(cfg, data, examples, caches, steps, rounds, shards: int = 8) -> None:
    """In-memory features against the same examples streamed from TFRecord shards (frozen, cached encoders:
    the fastest steps, where input speed shows)."""
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-") as tmp:
        with open(f"{tmp}/train.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["query", "item_id", "label"])
            writer.writerows(zip(examples.query_text, examples.item_id, examples.label.tolist()))
        glob = to_tfrecord.convert(f"{tmp}/train.csv", f"{tmp}/shards/train", shards=shards,
                                   strings=("query", "item_id"))["glob"]
        data_cfg = dataclasses.replace(cfg.data, interactions=dataclasses.replace(
            cfg.data.interactions, path=glob, query_column="query", item_id_column="item_id", label_column="label",
            query_history_items=None, streaming=True))
        info = stream.scan(data_cfg, data.catalog)
        assert info.kept == len(examples), (info.kept, len(examples))
        total = _schedule_steps(cfg, examples)
        memory = trainer_contender("in_memory", cfg, data, examples, steps, total, *caches)
        streamed = trainer_contender("streamed", cfg, data, examples, steps, total, *caches, streamed=info)
        print(f"[5] input: in memory vs streamed from {shards} TFRecord shards (interleave, shuffle, in-graph "
              f"catalog lookups), cached encodings, batch {cfg.train.batch_size}, {rounds} rounds x {steps} steps:",
              flush=True)
        ratios = interleave(memory, [streamed], rounds)
        print_rates(streamed, memory)
        report(streamed, memory, ratios["streamed"], digits=3)
        # The input pipelines alone (no model): how much headroom the stream has over the training step.
        per_round = []
        for r in range(max(3, rounds // 4)):
            rate = {}
            for c in ((memory, streamed) if r % 2 == 0 else (streamed, memory)):
                it = iter(c.ds)
                next(it)
                t0 = time.perf_counter()
                for _ in range(steps * 5):
                    next(it)
                rate[c.name] = steps * 5 * c.batch_size / (time.perf_counter() - t0)
            per_round.append(rate["streamed"] / rate["in_memory"])
        print(f"input only (no model), streamed examples/sec (indicative): {rate['streamed']:.0f}, in memory "
              f"{rate['in_memory']:.0f}")
        print(f"ratio input_only streamed/in_memory: {statistics.median(per_round):.3f}")
        print(f"  ({len(per_round)} interleaved rounds of {steps * 5} batches; per-round min {min(per_round):.3f}, "
              f"max {max(per_round):.3f})", flush=True)


def _schedule_steps(cfg, examples) -> int:
    return math.ceil(len(examples) / cfg.train.batch_size) * cfg.train.epochs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="movielens", choices=["movielens", "smoke"])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (all sections in a few minutes)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples used (random subset; default 8192, --quick 1024)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sections 1-2 (default: the preset's train.batch_size)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sections 1, 2, 5 and 6: timed steps per chunk (default 10)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="sections 1, 5 and 6: rounds (default 61, 61 and 15; --quick 31, 31 and 7)")
    parser.add_argument("--uncached-steps", type=int, default=None,
                        help="section 2: uncached steps per chunk (default 2, --quick 1)")
    parser.add_argument("--uncached-rounds", type=int, default=None, help="section 2: rounds (default 3, --quick 2)")
    parser.add_argument("--bert-batch-size", type=int, default=32,
                        help="sections 3-4, where BERT runs in the step (default 32)")
    parser.add_argument("--bert-steps", type=int, default=None,
                        help="sections 3-4: steps per chunk (default 5, --quick 3)")
    parser.add_argument("--bert-rounds", type=int, default=None,
                        help="sections 3-4: rounds (default 5 and 12, --quick 3 and 4)")
    parser.add_argument("--precision", default="mixed_bfloat16", choices=["mixed_bfloat16", "mixed_float16"],
                        help="section 3's mixed-precision policy")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    quick = args.quick
    steps = args.steps or 10
    n_examples = args.examples or (1024 if quick else 8192)
    bert_steps = args.bert_steps or (3 if quick else 5)

    warnings.filterwarnings("ignore")
    for noisy in ("tensorflow", "absl", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.time()

    sets = []
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    cfg = config_lib.build(args.preset, sets=sets)
    data = run_lib.load_data(cfg, tempfile.gettempdir())  # as fit reads it (cold hold-out included)
    rng = np.random.default_rng(cfg.train.seed)
    n = min(n_examples, len(data.train))
    examples = data.train.take(np.sort(rng.choice(len(data.train), size=n, replace=False)))
    preset_frozen = variant(cfg, "model.query_encoder.trainable_layers=0")  # caching needs a frozen encoder
    # Sections 1-5 measure a text query tower on in-batch negatives, the architecture of ReferenceModel (a
    # history preset's query is then its history titles' text); section 6 runs the preset's own model.
    frozen_cfg = text_query(preset_frozen)

    # --- untimed: the frozen encoder's cache, built as train() builds it -----------
    caches, num_layers = None, 0  # (query TextCache, item TextCache); the encoder's transformer layers
    if {"reference", "cache", "finetune", "input", "negatives"} & set(sections):
        encoder_model = build_model(frozen_cfg, data.catalog)
        query_encoder, item_encoder = encoder_model.query_tower.encoder, encoder_model.item_tower.text_encoder
        t0 = time.time()
        # Section 6 alone on a history preset reads no query text: its queries are not encoded then.
        text_queries = bool({"reference", "cache", "finetune", "input"} & set(sections)) \
            or not cfg.data.interactions.query_history_items
        query_cache = pipeline.TextCache(examples.query_text + data.validation.query_text,
                                         query_encoder.encode_texts) if text_queries else None
        caches = (query_cache, pipeline.TextCache(data.catalog.texts, item_encoder.encode_texts))
        num_layers = query_encoder.num_layers
        print(f"cache: {len(query_cache.texts) if query_cache else 0} query + {len(caches[1].texts)} item texts "
              f"encoded in {time.time() - t0:.0f}s (not timed)")
        del encoder_model

    q = cfg.model.query_encoder
    print(f"hardware: os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, GPUs "
          f"{len(tf.config.list_physical_devices('GPU'))}; TensorFlow {tf.__version__}, TFRS {tfrs.__version__}")
    print(f"data: preset {args.preset}: {n} of {len(data.train)} training examples (random subset, seed "
          f"{cfg.train.seed}), {len(data.catalog)} items, {len(data.validation)} validation queries; encoder "
          f"{q.checkpoint} (max_length {q.max_length})", flush=True)

    if "reference" in sections:
        section_reference(frozen_cfg, data, examples, caches, steps, args.rounds or (31 if quick else 61))
    if "cache" in sections:
        section_cache(frozen_cfg, data, examples, caches, steps, args.uncached_steps or (1 if quick else 2),
                      args.uncached_rounds or (2 if quick else 3))
    bert_cfg = text_query(variant(cfg, f"train.batch_size={args.bert_batch_size}"))
    if "xla_precision" in sections:
        section_xla_precision(bert_cfg, data, examples, args.precision, bert_steps,
                              args.bert_rounds or (3 if quick else 5))
    if "finetune" in sections:
        section_finetune(bert_cfg, data, examples, caches, num_layers, args.lora_rank, args.lora_learning_rate,
                         bert_steps, args.bert_rounds or (4 if quick else 12))
    if "input" in sections:
        section_input(frozen_cfg, data, examples, caches, steps, args.rounds or (31 if quick else 61))
    if "negatives" in sections:
        section_negatives(preset_frozen, data, examples, caches, steps, args.rounds or (7 if quick else 15))
    print(f"total {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
