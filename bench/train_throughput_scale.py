"""Training step speed with XLA and mixed precision, each as a ratio measured side by side in one run.

    .venv/bin/python bench/train_throughput_scale.py [--preset smoke|movielens] [--examples 1024]
        [--steps 10] [--rounds 5] [--batch-size B] [--trainable-layers L] [--quick]

Contenders (the same model, weights and data; built and compiled as
``trainer/task.py`` does, with ``train.mixed_precision`` / ``train.jit_compile``):

* ``float32``: the baseline, no XLA;
* ``xla``: ``compile(jit_compile=True)``, float32;
* ``mixed_bfloat16``: Keras ``mixed_bfloat16`` policy for the towers (the
  retrieval task, logits and loss stay float32), no XLA.

All three read one input pipeline: raw text tokenised and ids looked up in
``tf.data`` on the host (:func:`tfrec.towers.host_features`, what TPUs and
XLA need), so only the compiler or the precision differs, and the BERT encoder
runs every step (no frozen-encoder cache: with a cache, only the small heads
would be timed). The smoke preset fine-tunes one layer of a tiny random BERT;
``--preset movielens`` uses MiniLM-L6 on a random subset of MovieLens-100K.

Method: one untimed warm-up chunk per contender (tracing and XLA compilation,
whose time is printed), then rounds; each round runs one ``fit`` chunk of every
contender, in an order rotated per round. A chunk is ``1 + steps`` steps; the
first is left out and each other step is timed from the end of the previous
one to its own end. A chunk's rate is batch / median step time; a printed
ratio is the median over rounds of the per-round ratio (paired in time, so
machine load that drifts between rounds cancels). Prints lines
``ratio xla_on/xla_off: X`` and ``ratio mixed_bfloat16/float32: Y`` (> 1 =
faster than the float32, no-XLA baseline).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfrec  # noqa: E402,F401  (must precede tensorflow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrec import config as config_lib  # noqa: E402
from tfrec import runtime, training  # noqa: E402
from tfrec.data import dataset, pipeline  # noqa: E402
from tfrec.models import build_model  # noqa: E402
from tfrec.towers import host_features  # noqa: E402


class StepTimer(tf.keras.callbacks.Callback):
    """Wall-clock timestamps at every step's end."""

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True
        self.ends: list[float] = []

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


class Contender:
    def __init__(self, name: str, cfg, catalog, features: dict, precision: str, jit: bool, steps: int):
        self.name, self.steps, self.batch = name, steps, cfg.train.batch_size
        tf.keras.utils.set_random_seed(cfg.train.seed)  # the same initial weights for every contender
        runtime.set_precision(precision)
        try:
            self.model = build_model(cfg, catalog)
        finally:
            runtime.set_precision("none")
        opt = training.make_optimizer(cfg.train.learning_rate, 10_000, cfg.train.warmup_fraction,
                                      cfg.train.weight_decay, "head_adamw")
        self.model.compile(optimizer=opt, jit_compile=jit)
        encoder = self.model.query_tower.encoder
        if not encoder.frozen:
            self.model.encoder_optimizer = training.make_optimizer(
                cfg.train.encoder_learning_rate, 10_000, cfg.train.warmup_fraction, cfg.train.weight_decay,
                "encoder_adamw")
        sample = next(iter(pipeline.make_dataset(features, 2)))
        self.model.query_tower(sample), self.model.item_tower(sample)
        ds = pipeline.make_dataset(features, self.batch, shuffle=True, seed=cfg.train.seed, drop_remainder=True,
                                   repeat=True)
        self.ds = ds.map(lambda f: host_features(self.model.query_tower, self.model.item_tower, f),
                         num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        self.timer = StepTimer()
        self.step_seconds: list[float] = []
        self.warmup_seconds = 0.0

    def chunk(self, record: bool = True) -> float:
        """One fit call of 1 + steps steps; returns examples/sec from the median timed step."""
        started = time.perf_counter()
        self.model.fit(self.ds, epochs=1, steps_per_epoch=self.steps + 1, verbose=0, callbacks=[self.timer])
        ends = self.timer.ends
        wall = [ends[i] - ends[i - 1] for i in range(2, len(ends))]  # the first step (iterator, buffer) left out
        if record:
            self.step_seconds += wall
        else:
            self.warmup_seconds = time.perf_counter() - started
        return self.batch / statistics.median(wall)

    def rate(self) -> float:
        return self.batch / statistics.median(self.step_seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smoke", choices=["smoke", "movielens"])
    parser.add_argument("--examples", type=int, default=None, help="training examples used (default 1024, quick 512)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per chunk (default 10, quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's train.batch_size")
    parser.add_argument("--trainable-layers", type=int, default=None,
                        help="top encoder layers that train (default: the preset's; smoke 1, movielens 0)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    args = parser.parse_args(argv)
    steps = args.steps or (5 if args.quick else 10)
    rounds = args.rounds or (3 if args.quick else 5)
    n_examples = args.examples or (512 if args.quick else 1024)

    warnings.filterwarnings("ignore")
    for noisy in ("tensorflow", "absl", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.time()
    sets = []
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    if args.trainable_layers is not None:
        sets.append(f"model.query_encoder.trainable_layers={args.trainable_layers}")
    cfg = config_lib.build(args.preset, sets=sets)
    data = dataset.load(cfg.data)
    rng = np.random.default_rng(cfg.train.seed)
    n = min(n_examples, len(data.train))
    examples = data.train.take(np.sort(rng.choice(len(data.train), size=n, replace=False)))
    features = pipeline.training_features(examples, data.catalog, data.item_probability())

    contenders = [Contender("float32", cfg, data.catalog, features, "none", False, steps),
                  Contender("xla", cfg, data.catalog, features, "none", True, steps),
                  Contender("mixed_bfloat16", cfg, data.catalog, features, "mixed_bfloat16", False, steps)]
    q = cfg.model.query_encoder
    print(f"hardware: os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, no GPU/TPU: "
          f"{not tf.config.list_physical_devices('GPU')}; TensorFlow {tf.__version__}")
    print(f"data: preset {args.preset}, {n} training examples, {len(data.catalog)} items; {q.checkpoint}, "
          f"trainable_layers {q.trainable_layers}, max_length {q.max_length}, batch {cfg.train.batch_size}; "
          f"{rounds} rounds x {steps} timed steps", flush=True)
    for c in contenders:
        c.chunk(record=False)
        print(f"  warm-up (tracing{', XLA compilation' if c.name == 'xla' else ''}) {c.name}: "
              f"{c.warmup_seconds:.1f}s", flush=True)
    per_round = {"xla": [], "mixed_bfloat16": []}
    for r in range(rounds):
        order = contenders[r % 3:] + contenders[:r % 3]
        rate = {c.name: c.chunk() for c in order}
        for name in per_round:
            per_round[name].append(rate[name] / rate["float32"])
    for c in contenders:
        print(f"{c.name} examples/sec (indicative): {c.rate():.1f}")
    for name, label in (("xla", "xla_on/xla_off"), ("mixed_bfloat16", "mixed_bfloat16/float32")):
        ratios = per_round[name]
        print(f"ratio {label}: {statistics.median(ratios):.2f}")
        print(f"  (per-round min {min(ratios):.2f}, max {max(ratios):.2f}; pooled median step times "
              f"{contenders[['float32', 'xla', 'mixed_bfloat16'].index(name)].rate() / contenders[0].rate():.2f})")
    print(f"total {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
