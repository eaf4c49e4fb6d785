"""Optimisers, learning-rate schedule and the training callbacks (checkpoints, epoch log, TensorBoard).

:mod:`tfrec.run`'s ``train`` uses these; nothing here owns the loop. The progress lines are
:mod:`tfrec.progress`'s; what TensorBoard gets after training (HParams, Projector) is :mod:`tfrec.summaries`'.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from tfrec import early_stopping, fileio
from tfrec.errors import UserError

log = logging.getLogger("tfrec")


class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to
    ``end_fraction * peak`` at ``total_steps`` (and constant after).

    Kept by hand: TF has no warm-up + linear decay (``CosineDecay(warmup_target=...)``
    decays along a cosine), and ``PolynomialDecay(power=1)`` after a warm-up differs
    from this formula in the last float32 bit at about half the steps, which would
    change every trained result.
    """

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


def compile_model(model, cfg, total_steps: int) -> tf.keras.optimizers.Optimizer:
    """Optimisers and ``compile`` for ``model`` from ``cfg.train``; call inside ``strategy.scope()``.

    The heads get ``train.learning_rate``; encoder layers that train (fine-tuning
    or LoRA) get their own AdamW at ``train.encoder_learning_rate`` (as
    ``model.encoder_optimizer``). Under ``mixed_float16`` both are wrapped in a
    ``LossScaleOptimizer`` (bfloat16 needs no loss scaling). Returns the heads'
    optimiser (what a checkpoint saves as ``optimizer``).
    """
    t = cfg.train
    loss_scaled = t.mixed_precision == "mixed_float16"
    head_opt = make_optimizer(t.learning_rate, total_steps, t.warmup_fraction, t.weight_decay, "head_adamw")
    if loss_scaled:
        head_opt = tf.keras.mixed_precision.LossScaleOptimizer(head_opt)
    model.compile(optimizer=head_opt, steps_per_execution=t.steps_per_execution, jit_compile=t.jit_compile)
    encoders = (model.query_tower.encoder, model.item_tower.text_encoder)
    if any(e is not None and not e.frozen for e in encoders):
        model.encoder_optimizer = make_optimizer(t.encoder_learning_rate, total_steps, t.warmup_fraction,
                                                 t.weight_decay, "encoder_adamw")
        if loss_scaled:
            model.encoder_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(model.encoder_optimizer)
    return head_opt


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


def learning_rate(optimizer: tf.keras.optimizers.Optimizer, step) -> float:
    """The rate ``optimizer`` applies at (0-based) ``step``: its schedule there, or its constant rate."""
    # The schedule itself (as Keras' TensorBoard reads it): the public ``learning_rate`` of a scheduled
    # optimiser is the rate its last step applied, schedule(step - 1), one step behind.
    lr = getattr(optimizer, "inner_optimizer", optimizer)._learning_rate
    # get_value: under tf.distribute the rate is a MirroredVariable (no float()).
    return float(tf.keras.backend.get_value(lr(step) if callable(lr) else lr))


class TensorBoard(tf.keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback: every ``update_freq`` steps the running training loss and
    the learning rate, per epoch the training and validation logs, optional weight histograms.

    Two departures, each because the library cannot do it:
    - batch summaries use the optimiser's step (``optimizer.iterations``) as their x axis:
      Keras uses a counter that restarts at 0 in every ``fit`` call, so a resumed run
      would draw over the steps it had already logged;
    - the learning rate is one curve, ``learning_rate(optimizer, step)`` at ``step`` with
      the batch summaries (``batch_learning_rate``); Keras' own copy is written per epoch on
      the epoch axis, at the step after the epoch, a second curve that disagrees with it.

    Per step it also writes what the callbacks before it add to the batch logs
    (``batch_examples_per_second`` from :class:`tfrec.progress.TrainingProgress`), and
    names the in-batch metrics once: ``batch_recall@10``, not ``batch_batch_recall@10``.
    """

    def set_model(self, model):
        super().set_model(model)
        self._train_step = model.optimizer.iterations

    def _implements_train_batch_hooks(self) -> bool:
        return True  # the learning rate and the callbacks' batch logs (examples_per_second) are written here

    def _collect_learning_rate(self, logs):
        return logs

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(logs, dict):
            step = self.model.optimizer.iterations
            # Keras names a batch summary "batch_" + key: the in-batch metrics (batch_recall@10) lose their own
            # prefix so that the tag reads once.
            logs = {k.removeprefix("batch_"): v for k, v in logs.items()}
            logs["learning_rate"] = learning_rate(self.model.optimizer, step)
            if getattr(self.model, "encoder_optimizer", None) is not None:
                logs["encoder_learning_rate"] = learning_rate(self.model.encoder_optimizer, step)
        super().on_train_batch_end(batch, logs)


class EpochLog(tf.keras.callbacks.Callback):
    """One readable line per epoch, in the log.

    Kept by hand: Keras' ``ProgbarLogger`` prints to stdout, not the logger, and
    ``verbose=2`` still takes two lines per epoch with no epoch time.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs, self.start = epochs, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = [k for k in logs if k in ("loss",) or k.startswith("val_") or k.startswith("batch_")]
        parts = " ".join(f"{k}={logs[k]:.4f}" for k in shown)
        rate = f", {logs['examples_per_second']:,.0f} examples/s" if "examples_per_second" in logs else ""
        log.info("epoch %d/%d  %s  (%.0fs%s)", epoch + 1, self.epochs, parts, time.time() - self.start, rate)


class CheckpointAndEarlyStop(tf.keras.callbacks.Callback):
    """Saves the latest state every epoch (and every ``every_steps`` steps), keeps the best epoch's weights,
    stops early.

    Kept by hand: Keras' ``BackupAndRestore`` backs up the model, optimiser and epoch/batch
    counters only, so ``EarlyStopping``'s and ``ModelCheckpoint(save_best_only)``'s best value
    and patience start over in a resumed run, and it deletes its backup when training ends, so
    rerunning a finished job trains again (tests/tfrec/test_training.py shows both).

    ``JOB_DIR/checkpoints/`` holds ``latest`` (model and optimisers, for resume;
    ``ckpt-<global step>``), ``best`` (model weights of the best epoch by
    ``monitor``, swapped in whole by renames) and ``state.json`` (epoch, batches
    done in the next epoch, the checkpoint to resume from, best value, patience
    counter), written last and atomically: a run killed at any moment, or whose
    disk fills up, resumes from the last complete checkpoint that
    ``state.json`` names, never from a half-written one.

    The folder may be a ``tf.io.gfile`` URL. There folders cannot be renamed, so
    ``best`` is replaced by copying ``best.new`` into it file by file, ``best.json``
    last; a complete ``best.new`` (its ``best.json`` written) is copied again after
    a kill, so one of the two is always complete.

    Args:
      directory: the checkpoints folder.
      checkpoint: a ``tf.train.Checkpoint`` of the model and optimisers.
      monitor: the epoch log key to maximise (``val_recall@10``).
      patience: epochs without improvement before stopping (:mod:`tfrec.early_stopping`'s rule).
      every_steps: also save every this many training steps inside an epoch
        (``train.checkpoint_every_steps``); None = at epoch ends only.
    """

    def __init__(self, directory: str, checkpoint: tf.train.Checkpoint, monitor: str, patience: int,
                 every_steps: int | None = None):
        super().__init__()
        self.directory, self.monitor, self.patience = fileio.location(directory), monitor, patience
        self.every_steps = every_steps
        self.manager = tf.train.CheckpointManager(checkpoint, str(fileio.join(directory, "latest")), max_to_keep=2)
        self.state = read_state(directory) or {"epoch": -1, "best": -np.inf, "best_epoch": -1, "wait": 0,
                                               "stopped": False}
        self.state.setdefault("batch", 0)  # batches of epoch `epoch + 1` inside the latest checkpoint
        self._recover_best()
        self._epoch, self._first_batch, self._first_iteration, self._saved_batch = 0, 0, 0, 0

    # -- resume -------------------------------------------------------------------------------------------
    def resume_path(self) -> str | None:
        """The checkpoint to restore: the one ``state.json`` names (complete by construction), or None."""
        if self.state["epoch"] < 0 and not self.state["batch"]:
            return None
        name = self.state.get("checkpoint")
        path = str(fileio.join(self.directory, name)) if name else self.manager.latest_checkpoint  # older state.json
        if not path or not tf.io.gfile.exists(path + ".index"):
            raise UserError(f"{self.directory}: state.json names checkpoint '{name}', which is missing; "
                            "delete the checkpoints folder to start over")
        return path

    def _recover_best(self) -> None:
        """Finishes or undoes a best-weights swap that a kill interrupted."""
        best, new, old = (fileio.join(self.directory, n) for n in ("best", "best.new", "best.old"))
        if fileio.is_url(self.directory):
            if fileio.isfile(fileio.join(new, "best.json")):
                _replace_by_copy(new, best)  # killed while copying a complete best.new: copy it again
            fileio.rmtree(new)
        else:
            if not best.exists() and old.exists():
                os.replace(old, best)  # killed between the two renames: the previous best is complete
            shutil.rmtree(new, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        marker = fileio.join(best, "best.json")
        if fileio.isfile(marker):
            saved = json.loads(fileio.read_text(marker))
            if saved["epoch"] > self.state["best_epoch"]:
                # Saved, then killed before state.json: those weights did reach that value; keep them as best.
                self.state.update(best=saved["value"], best_epoch=saved["epoch"], wait=0)

    def fits(self, steps: int, epochs: int) -> list[tuple[int, int, int, int]]:
        """The ``fit`` calls that finish training: ``(initial_epoch, epochs, steps_per_epoch, skip_batches)``.

        The shuffled stream is seeded and repeated, so skipping the batches already trained on
        gives a resumed run exactly the batches an uninterrupted one would have seen. A run
        killed inside an epoch first finishes that epoch in a fit of its own (the steps left):
        Keras starts a fit mid-epoch only through a private hook (BackupAndRestore's).
        """
        epoch, batch = self.state["epoch"] + 1, min(self.state["batch"], steps - 1)
        plan = [(epoch, epoch + 1, steps - batch, epoch * steps + batch)] if batch else []
        first_full = epoch + 1 if batch else epoch
        return [leg for leg in plan + [(first_full, epochs, steps, first_full * steps)] if leg[0] < leg[1]]

    def evaluate_start(self, model, validate: Callable[[], dict], epochs: int) -> None:
        """Epoch 0: ``model`` before any training step, scored by ``validate`` and kept as the best (epoch
        index -1, ``best_epoch`` 0 in ``eval.json``) until an epoch beats it; patience counts from it.

        Once per run: a resumed run finds its value in ``state.json``.
        """
        if self.state["epoch"] >= 0 or self.state["batch"] or self.state["best"] > -np.inf:
            return
        started = time.time()
        logs = {f"val_{k}": v for k, v in validate().items()}
        log.info("epoch 0/%d (start)  %s  (%.0fs)", epochs, " ".join(f"{k}={v:.4f}" for k, v in logs.items()),
                 time.time() - started)
        self.set_model(model)
        value = float(logs.get(self.monitor, np.nan))
        rule = early_stopping.EarlyStopping(self.patience)
        if rule.update(-1, value) == early_stopping.IMPROVED:
            self._guard(self._save_best, -1, value)
            self.state.update(best=rule.best, best_epoch=rule.best_epoch, wait=rule.wait)
            self._guard(write_state, self.directory, self.state)

    # -- saving -------------------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._first_batch = self.state["batch"] if epoch == self.state["epoch"] + 1 else 0
        self._saved_batch = self._first_batch
        self._first_iteration = (int(tf.keras.backend.get_value(self.model.optimizer.iterations))
                                 if self.every_steps else 0)

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_steps:
            return
        ran = int(tf.keras.backend.get_value(self.model.optimizer.iterations)) - self._first_iteration
        done = self._first_batch + ran
        if done - self._saved_batch >= self.every_steps and ran < self.params.get("steps", ran + 1):
            self._save(epoch=self._epoch - 1, batch=done)  # the epoch end saves the last batch
            self._saved_batch = done
            log.info("checkpoint: epoch %d, batch %d (step %d)", self._epoch + 1, done,
                     int(tf.keras.backend.get_value(self.model.optimizer.iterations)))

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get(self.monitor, np.nan))
        rule = early_stopping.EarlyStopping(self.patience, self.state["best"], self.state["best_epoch"],
                                            self.state["wait"])
        decision = rule.update(epoch, value)
        if decision == early_stopping.IMPROVED:
            self._guard(self._save_best, epoch, value)
        self.state.update(best=rule.best, best_epoch=rule.best_epoch, wait=rule.wait)
        if decision == early_stopping.STOP:
            self.state["stopped"] = True
            self.model.stop_training = True
            log.info("early stop: %s did not improve for %d epochs (best %.4f at epoch %d)", self.monitor,
                     self.state["wait"], self.state["best"], self.state["best_epoch"] + 1)
        self._save(epoch=epoch, batch=0)

    def _save(self, epoch: int, batch: int) -> None:
        step = int(tf.keras.backend.get_value(self.model.optimizer.iterations))
        path = self._guard(self.manager.save, checkpoint_number=step)
        self.state.update(epoch=epoch, batch=batch, step=step,
                          checkpoint=fileio.relative(path, self.directory))
        self._guard(write_state, self.directory, self.state)

    def _save_best(self, epoch: int, value: float) -> None:
        best, new, old = (fileio.join(self.directory, n) for n in ("best", "best.new", "best.old"))
        fileio.rmtree(new)
        self.model.save_weights(str(fileio.join(new, "weights")))
        fileio.write_text(fileio.join(new, "best.json"), json.dumps({"epoch": epoch, "value": value}))
        if fileio.is_url(self.directory):  # no folder rename on an object store
            _replace_by_copy(new, best)
            fileio.rmtree(new)
            return
        if best.exists():
            os.replace(best, old)
        os.replace(new, best)
        shutil.rmtree(old, ignore_errors=True)

    def _guard(self, fn, *args, **kwargs):
        """Runs a write; a full disk or an unwritable folder becomes a one-line UserError."""
        try:
            return fn(*args, **kwargs)
        except (OSError, tf.errors.OpError) as e:
            # TF: "{{function_node ...}} /path/ckpt-26_temp/part...; No space left on device [Op:SaveV2]"
            reason = getattr(e, "strerror", None) or re.sub(r"\{\{.*?\}\}|\[Op:[^\]]*\]", "",
                                                            str(getattr(e, "message", e)).splitlines()[0])
            reason = reason.rsplit("; ", 1)[-1].strip()
            kept = self.state.get("checkpoint") or "none yet"
            raise UserError(f"{self.directory}: could not write a checkpoint ({reason}); the last complete one "
                            f"({kept}) is kept: free space or fix permissions, then rerun the same command to "
                            "resume") from None


def _replace_by_copy(new: str, best: str) -> None:
    """``best`` becomes a copy of the complete folder ``new``; ``best.json`` goes first and comes back last,
    so ``best`` counts as complete only once all its files are there."""
    fileio.remove(fileio.join(best, "best.json"))
    fileio.rmtree(best)
    fileio.copy_tree(new, best, last="best.json")


def read_state(directory: str | os.PathLike) -> dict | None:
    path = fileio.join(directory, "state.json")
    if not fileio.isfile(path):
        return None
    try:
        return json.loads(fileio.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON; delete the checkpoints folder to start over") from None


def write_state(directory: str | os.PathLike, state: dict) -> None:
    """Replaces ``directory/state.json`` atomically (flushed to disk first: it names the checkpoint to resume)."""
    fileio.write_atomic(fileio.join(directory, "state.json"), lambda f: f.write(json.dumps(state)), fsync=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
