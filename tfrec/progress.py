"""Plain progress lines in the log for anything long: training epochs, embedding passes, baselines.

A terminal also gets Keras' or tqdm's progress bar, but a bar is not in a log
file, and a log that says nothing for minutes cannot tell a slow run from a
hung one. :class:`Progress` decides when a loop of known length writes a line
(at least every ``every_seconds`` of wall time, and at every ``every_fraction``
of the work when given) and what the line says: done / total, the rate, and
when the loop ends (clock time and time left). :class:`TrainingProgress` is the
Keras callback built on it for ``fit``: per epoch, the end of the epoch and of
training, one early estimate of the whole training, and ``examples_per_second``
in the logs, which the TensorBoard callback after it writes as a scalar.

Time is read from injectable clocks (``clock``: monotonic seconds, for rates
and intervals; ``wall``: epoch seconds, for the clock time shown), so tests
drive it with a fake clock.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import tensorflow as tf

log = logging.getLogger("tfrec")

# A softmax over the whole catalog is called out when the catalog holds at least this many times the batch: each
# step then embeds and scores that many more items than a batch's own.
LARGE_CATALOG_RATIO = 10


def format_duration(seconds: float) -> str:
    """``42s``, ``5m 12s``, ``2h 05m`` (rounded to the second)."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def ends(wall_now: float, seconds_left: float) -> str:
    """``14:32:10 (in 5m 12s)``: the local clock time ``seconds_left`` after ``wall_now`` (epoch seconds), with
    the date (``05-02 14:32``) when that is a day or more away."""
    stamp = time.localtime(wall_now + seconds_left)
    clock = time.strftime("%m-%d %H:%M" if seconds_left >= 86400 else "%H:%M:%S", stamp)
    return f"{clock} (in {format_duration(seconds_left)})"


class Progress:
    """When a loop of ``total`` units writes a progress line, and its rate.

    A line is due after ``every_seconds`` since the last one, or on crossing
    the next ``every_fraction`` of ``total`` (when given) provided
    ``min_seconds`` have passed since the last line, so a loop of a few
    seconds does not write ten lines. Nothing is due once the loop is done
    (its caller writes its own closing line).

    The rate counts from :meth:`mark` (the start, or a later point: training
    marks after its first step, whose tracing is not a step's cost).

    Args:
      label: what the loop does (``embedding the catalog``), the line's start.
      total: units in the loop; unit: their name (``steps``, ``queries``).
      done: units already done at the start (a resumed epoch).
      clock, wall: monotonic and epoch seconds, injectable for tests.
    """

    def __init__(self, label: str, total: int, unit: str = "steps", every_seconds: float = 30.0,
                 every_fraction: float | None = None, min_seconds: float = 5.0, done: int = 0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.label, self.total, self.unit = label, int(total), unit
        self.every_seconds, self.every_fraction, self.min_seconds = every_seconds, every_fraction, min_seconds
        self.clock, self.wall = clock, wall
        self.last_line = self.clock()
        self.last_fraction = self._fraction_index(done)
        self.mark(done)
        self.updated = False

    def _fraction_index(self, done: int) -> int:
        return int(done // (self.every_fraction * self.total)) if self.every_fraction and self.total else 0

    def mark(self, done: int) -> None:
        """Counts the rate from here (``done`` units so far)."""
        self.marked_at, self.marked_done = self.clock(), done

    def rate(self, done: int, now: float | None = None) -> float | None:
        """Units per second from the mark to ``now`` (default: the clock), or None before any unit and time."""
        seconds = (self.clock() if now is None else now) - self.marked_at
        return (done - self.marked_done) / seconds if done > self.marked_done and seconds > 0 else None

    def due(self, done: int) -> bool:
        """Whether a line is due at ``done`` units; if so, counts it as written."""
        now = self.clock()
        if done >= self.total:
            return False
        since = now - self.last_line
        crossed = self._fraction_index(done) > self.last_fraction
        if since >= self.every_seconds or (crossed and since >= self.min_seconds):
            self.last_line, self.last_fraction = now, self._fraction_index(done)
            return True
        return False

    def line(self, done: int) -> str:
        """``embedding the catalog: 40,960/100,000 items (41%), 2,345 items/s, ends 14:32:10 (in 25s)``."""
        text = f"{self.label}: {done:,}/{self.total:,} {self.unit} ({100 * done / max(self.total, 1):.0f}%)"
        rate = self.rate(done)
        if rate:
            text += f", {rate:,.0f} {self.unit}/s, ends {ends(self.wall(), (self.total - done) / rate)}"
        return text

    def update(self, done: int) -> None:
        """Logs :meth:`line` when one is due. The rate counts from the first update: the first batch of a pass
        traces its function, which later batches do not pay."""
        if not self.updated:
            self.mark(done)
            self.updated = True
        if self.due(done):
            log.info("%s", self.line(done))


class TrainingProgress(tf.keras.callbacks.Callback):
    """Progress lines for Keras ``fit`` through the ``tfrec`` logger, and ``examples_per_second`` in the logs.

    Keras' own ``ProgbarLogger`` draws a bar on a terminal only (``verbose=2``
    prints once per epoch, to stdout, with no end time). In every epoch this
    writes ``train: epoch 1 of 3, step 430/860 (50%), 1,234 examples/s; epoch ends
    14:32:10 (in 5m 12s), training ends 14:58:40 (in 31m 42s)`` at least every
    ``every_seconds`` or every ``every_fraction`` of the epoch (see
    :class:`Progress`). After ``early_steps`` measured steps or
    ``early_seconds`` (whichever first) of the first epoch it trains, one line
    estimates the whole training and names what dominates it.

    Rates count from each epoch's first batch end (the first step traces the
    graph). The end of an epoch includes what runs after its last step
    (validation, checkpoint), measured at each epoch end and added to every
    epoch left once known; so place this callback after those that run then.

    Args:
      steps_per_epoch: S, the steps of a full epoch (a resumed fit's shorter
        first epoch is its last steps); epochs: E, the last epoch (1-based).
      batch_size: examples per step, for examples/s.
      label: the lines' start; estimate: write the early estimate line.
      full_softmax_items: the catalog size when every step scores the whole
        catalog (``retrieval.negatives=full``), else None.
      validation_steps: the batches of Keras' validation pass after each
        epoch (0: none). Until an epoch end is measured, each counts as one
        training step: a forward pass is cheaper than a step, but the
        full-catalog metrics and the checkpoint that follow it are not counted
        otherwise, and an estimate that leaves the epoch ends out falls short.
      clock, wall: as in :class:`Progress`.
    """

    def __init__(self, steps_per_epoch: int, epochs: int, batch_size: int, label: str = "train",
                 estimate: bool = True, full_softmax_items: int | None = None, validation_steps: int = 0,
                 every_seconds: float = 30.0,
                 every_fraction: float = 0.1, min_seconds: float = 5.0, early_steps: int = 20,
                 early_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        super().__init__()
        self.steps, self.epochs, self.batch_size, self.label = steps_per_epoch, epochs, batch_size, label
        self.full_softmax_items, self.validation_steps = full_softmax_items, validation_steps
        self.every = (every_seconds, every_fraction, min_seconds)
        self.early_steps, self.early_seconds = early_steps, early_seconds
        self.estimated = not estimate
        self.clock, self.wall = clock, wall
        self.started: float | None = None
        self.epoch, self.offset, self.done, self.progress, self.marked = 0, 0, 0, None, False
        self.last_batch_end, self.epoch_end_seconds = 0.0, []

    def _implements_train_batch_hooks(self) -> bool:
        return True

    def on_train_begin(self, logs=None):
        if self.started is None:  # the first fit of a resumed run's legs
            self.started = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        leg_steps = (self.params or {}).get("steps") or self.steps
        self.epoch, self.offset = epoch, max(self.steps - leg_steps, 0)
        self.done, self.marked = self.offset, False
        self.progress = Progress(self.label, self.steps, "steps", *self.every, done=self.offset,
                                 clock=self.clock, wall=self.wall)
        self.last_batch_end = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        self.done = self.offset + batch + 1
        self.last_batch_end = self.clock()
        if not self.marked:  # the epoch's first step (or first steps_per_execution steps) traces: not counted
            self.progress.mark(self.done)
            self.marked = True
            return
        rate = self.progress.rate(self.done)
        if rate is None:
            return
        if isinstance(logs, dict):
            logs["examples_per_second"] = rate * self.batch_size
        if not self.estimated and (self.done - self.progress.marked_done >= self.early_steps
                                   or self.clock() - self.progress.marked_at >= self.early_seconds):
            self.estimated = True
            log.info("%s", self.estimate_line(rate))
        if self.progress.due(self.done):
            log.info("%s", self.line(rate))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end_seconds.append(self.clock() - self.last_batch_end)
        # The epoch's rate over its steps, up to its last step (not the validation after it).
        rate = self.progress.rate(self.done, now=self.last_batch_end) if self.progress is not None else None
        if rate and logs is not None:
            logs["examples_per_second"] = rate * self.batch_size

    # -- the arithmetic -------------------------------------------------------------------------------------
    def epoch_end_cost(self, step_rate: float | None = None) -> float:
        """Seconds after an epoch's last step (validation, checkpoint): their mean so far; before any is
        measured, ``validation_steps`` / ``step_rate`` (0 without a rate or validation batches)."""
        ends_ = self.epoch_end_seconds
        if ends_:
            return sum(ends_) / len(ends_)
        return self.validation_steps / step_rate if step_rate else 0.0

    def seconds_left(self, step_rate: float) -> tuple[float, float]:
        """(seconds to the end of this epoch, to the end of training) at ``step_rate`` steps/s.

        epoch: (S - done) / rate + V; training: that + (E - epoch - 1) * (S / rate + V),
        V = :meth:`epoch_end_cost`.
        """
        v = self.epoch_end_cost(step_rate)
        epoch_left = (self.steps - self.done) / step_rate + v
        return epoch_left, epoch_left + (self.epochs - self.epoch - 1) * (self.steps / step_rate + v)

    def line(self, step_rate: float) -> str:
        epoch_left, total_left = self.seconds_left(step_rate)
        now = self.wall()
        # "epoch 1 of 3", not "1/3": "epoch 1/3" starts the line that closes the epoch (EpochLog's), which
        # whoever watches the log for an epoch's end looks for.
        return (f"{self.label}: epoch {self.epoch + 1} of {self.epochs}, step {self.done:,}/{self.steps:,} "
                f"({100 * self.done / self.steps:.0f}%), {step_rate * self.batch_size:,.0f} examples/s; "
                f"epoch ends {ends(now, epoch_left)}, training ends {ends(now, total_left)}")

    def estimate_line(self, step_rate: float) -> str:
        """The whole training's time: what ran so far plus :meth:`seconds_left`, and what dominates it."""
        _, total_left = self.seconds_left(step_rate)
        total = self.clock() - self.started + total_left
        epochs_left = self.epochs - self.epoch
        v = self.epoch_end_cost(step_rate)
        if self.epoch_end_seconds:
            validation = f"{format_duration(v)} after each epoch"
        elif self.validation_steps:
            validation = (f"about {format_duration(v)} after each epoch for its {self.validation_steps:,} batches, "
                          "measured once the first epoch ends")
        else:
            validation = "not measured yet, added once the first epoch ends"
        text = (f"{self.label}: estimate {format_duration(total)} for {epochs_left} epoch"
                f"{'s' if epochs_left != 1 else ''} x {self.steps:,} steps at {step_rate * self.batch_size:,.0f} "
                f"examples/s (validation {validation}), ends {ends(self.wall(), total_left)}; ")
        steps_time = total_left - epochs_left * v
        if self.epoch_end_seconds and steps_time < epochs_left * v:
            return text + "validation dominates (eval.validation_max_queries sets its size)"
        n = self.full_softmax_items
        if n is not None and n >= LARGE_CATALOG_RATIO * self.batch_size:
            return text + (f"the training steps dominate, each a softmax over the whole catalog ({n:,} items "
                           f"embedded and scored for {self.batch_size:,} queries, retrieval.negatives=full); "
                           "retrieval.negatives=in_batch|mixed would score the batch's items (and sampled ones) "
                           "instead")
        return text + "the training steps dominate"
