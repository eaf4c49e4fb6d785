"""Optimisers, learning-rate schedule, callbacks and TensorBoard extras.

``trainer/task.py``'s ``train()`` uses these; nothing here owns the loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfrec")


class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to
    ``end_fraction * peak`` at ``total_steps`` (and constant after)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.0):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)
        self.end_fraction = float(end_fraction)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        up = self.peak * tf.minimum(1.0, (step + 1.0) / warm)
        frac = tf.clip_by_value((step - self.warmup_steps) / decay_span, 0.0, 1.0)
        down = self.peak * (1.0 - (1.0 - self.end_fraction) * frac)
        return tf.where(step < self.warmup_steps, up, down)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "end_fraction": self.end_fraction}


def make_optimizer(peak: float, total_steps: int, warmup_fraction: float, weight_decay: float,
                   name: str) -> tf.keras.optimizers.Optimizer:
    """AdamW with warm-up and linear decay; no decay on biases, norms and embeddings' OOV rows."""
    schedule = WarmupLinearDecay(peak, int(total_steps * warmup_fraction), total_steps, end_fraction=0.05)
    opt = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, name=name)
    opt.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm"])
    return opt


class ValidationMetrics(tf.keras.callbacks.Callback):
    """Adds full-catalog validation metrics (``val_recall@10``...) to each epoch's logs.

    Args:
      evaluate: a function returning ``{"recall@10": ..., ...}`` for the current weights.
    """

    def __init__(self, evaluate: Callable[[], dict]):
        super().__init__()
        self.evaluate = evaluate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for key, value in self.evaluate().items():
                logs[f"val_{key}"] = value


class LearningRateLogger(tf.keras.callbacks.Callback):
    """Puts the current learning rates into the epoch logs (TensorBoard plots them)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for key, opt in (("learning_rate", self.model.optimizer), ("encoder_learning_rate",
                                                                   self.model.encoder_optimizer)):
            if opt is not None:
                lr = opt.learning_rate
                # get_value: under tf.distribute the rate is a MirroredVariable (no float()).
                logs[key] = float(tf.keras.backend.get_value(lr(opt.iterations) if callable(lr) else lr))


class EpochLog(tf.keras.callbacks.Callback):
    """One readable line per epoch."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs, self.start = epochs, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = [k for k in logs if k in ("loss",) or k.startswith("val_") or k.startswith("batch_")]
        parts = " ".join(f"{k}={logs[k]:.4f}" for k in shown)
        log.info("epoch %d/%d  %s  (%.0fs)", epoch + 1, self.epochs, parts, time.time() - self.start)


class CheckpointAndEarlyStop(tf.keras.callbacks.Callback):
    """Saves the latest state every epoch, keeps the best epoch's weights, stops early.

    ``JOB_DIR/checkpoints/`` holds ``latest`` (model and optimisers, for resume),
    ``best`` (model weights of the best epoch by ``monitor``) and ``state.json``
    (epoch, best value, patience counter), written last and atomically so a run
    killed mid-save resumes from the previous complete epoch.
    """

    def __init__(self, directory: str, checkpoint: tf.train.Checkpoint, monitor: str, patience: int):
        super().__init__()
        self.directory, self.monitor, self.patience = Path(directory), monitor, patience
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.directory / "latest"), max_to_keep=2)
        self.state = read_state(directory) or {"epoch": -1, "best": -np.inf, "best_epoch": -1, "wait": 0,
                                               "stopped": False}

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get(self.monitor, np.nan))
        improved = value > self.state["best"]
        if improved:
            self.model.save_weights(str(self.directory / "best" / "weights"))
            self.state.update(best=value, best_epoch=epoch, wait=0)
        else:
            self.state["wait"] += 1
        self.manager.save(checkpoint_number=epoch + 1)
        self.state["epoch"] = epoch
        if self.state["wait"] > self.patience:
            self.state["stopped"] = True
            self.model.stop_training = True
            log.info("early stop: %s did not improve for %d epochs (best %.4f at epoch %d)", self.monitor,
                     self.state["wait"], self.state["best"], self.state["best_epoch"] + 1)
        write_state(self.directory, self.state)


def read_state(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(directory: str | os.PathLike, state: dict) -> None:
    path = Path(directory) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def write_hparams(log_dir: str, hparams: dict, metrics: dict[str, float]) -> None:
    """Records the run's hyperparameters and final metrics for TensorBoard's HParams tab."""
    from tensorboard.plugins.hparams import api as hp

    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hp.hparams(flat)
        for key, value in metrics.items():
            tf.summary.scalar(key, value, step=0)


def write_projector(log_dir: str, embeddings: np.ndarray, labels: list[str]) -> None:
    """Item embeddings [num_items, dim] in TensorBoard's projector, labelled by title."""
    from tensorboard.plugins import projector

    folder = os.path.join(log_dir, "projector")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as f:
        for label in labels:
            f.write(label.replace("\t", " ").replace("\n", " ") + "\n")
    variable = tf.Variable(embeddings, name="item_embeddings")
    tf.train.Checkpoint(embedding=variable).save(os.path.join(folder, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    emb.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(folder, config)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
