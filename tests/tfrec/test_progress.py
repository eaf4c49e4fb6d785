"""tfrec/progress.py: the progress lines, driven by a fake clock (no sleeping), against hand-worked numbers."""

from __future__ import annotations

import logging
import time

import pytest

from tfrec import progress
from tfrec.progress import Progress, TrainingProgress

MIDNIGHT = 1_700_006_400  # 2023-11-15 00:00:00 UTC: wall = MIDNIGHT + t reads as 00:MM:SS


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return MIDNIGHT + self.t


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="tfrec")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "tfrec"]


def test_durations_read_as_a_person_says_them():
    assert [progress.format_duration(s) for s in (0, 41.6, 60, 312, 3599.6, 7500)] == [
        "0s", "42s", "1m 00s", "5m 12s", "1h 00m", "2h 05m"]


def test_a_slow_loop_writes_a_line_every_30_seconds(utc, lines):
    clock = FakeClock()
    p = Progress("embedding the catalog", 1000, "rows", clock=clock, wall=clock.wall)
    for done in range(1, 101):  # one row a second
        clock.t = float(done)
        p.update(done)
    # At 30 s: 30 rows done at 1 row/s, 970 left -> 970 s = 16m 10s, at 30 + 970 = 1000 s = 00:16:40.
    assert lines() == [
        "embedding the catalog: 30/1,000 rows (3%), 1 rows/s, ends 00:16:40 (in 16m 10s)",
        "embedding the catalog: 60/1,000 rows (6%), 1 rows/s, ends 00:16:40 (in 15m 40s)",
        "embedding the catalog: 90/1,000 rows (9%), 1 rows/s, ends 00:16:40 (in 15m 10s)"]


def test_the_rate_leaves_out_the_first_batch_which_traces(utc, lines):
    clock = FakeClock()
    p = Progress("encoding items", 1000, "texts", clock=clock, wall=clock.wall)
    clock.t = 20.0  # the first 10 texts: 20 s, most of it tracing
    p.update(10)
    clock.t = 31.0  # then 10 texts a second
    p.update(120)
    # From the first update (10 texts at 20 s) to 120 at 31 s: 110 / 11 = 10 texts/s (not 120 / 31 = 3.9);
    # 880 left -> 88 s, at 31 + 88 = 119 s = 00:01:59.
    assert lines() == ["encoding items: 120/1,000 texts (12%), 10 texts/s, ends 00:01:59 (in 1m 28s)"]


def test_a_short_loop_writes_nothing():
    clock = FakeClock()
    p = Progress("embedding", 10, every_fraction=0.1, clock=clock)
    due = []
    for done in range(1, 11):
        clock.t = done * 0.4  # 4 s in all: every 10% mark falls within min_seconds (5 s) of the start
        due.append(p.due(done))
    assert not any(due)


def drive_epoch(cb: TrainingProgress, clock: FakeClock, epoch: int, first_step: float, step: float,
                steps: int, validation: float | None = None) -> dict:
    """Runs ``steps`` batches of epoch ``epoch``: the first ends ``first_step`` s after the epoch begins, then
    one every ``step`` s; ``validation``: the seconds between the last batch and the epoch's end."""
    cb.on_epoch_begin(epoch)
    start, logs = clock.t, {}
    for batch in range(steps):
        clock.t = start + first_step + step * batch
        logs = {"loss": 1.0}
        cb.on_train_batch_end(batch, logs)
    if validation is not None:
        clock.t += validation
        logs = {"loss": 1.0}
        cb.on_epoch_end(epoch, logs)
    return logs


def test_training_lines_over_a_long_epoch_and_the_early_estimate(utc, lines):
    """S = 1,000 steps, E = 2 epochs, 100 examples a step.

    Epoch 1: the first step ends at 5 s (tracing), then a step every 0.1 s: 10 steps/s, 1,000 examples/s,
    counted from the first step's end. Validation after it: 20 s. Epoch 2: 0.05 s a step (2,000 examples/s).
    """
    clock = FakeClock()
    cb = TrainingProgress(1000, 2, 100, clock=clock, wall=clock.wall)
    cb.set_params({"steps": 1000, "epochs": 2})
    cb.on_train_begin()
    last = drive_epoch(cb, clock, 0, first_step=5.0, step=0.1, steps=1000, validation=20.0)
    assert last["examples_per_second"] == pytest.approx(1000.0)  # the epoch's rate, without its validation
    got = lines()
    # After 20 steps past the first (done = 21, t = 7 s): steps left 979 + 1,000 at 10/s = 197.9 s; the whole
    # training 7 + 197.9 = 204.9 s = 3m 25s, ending at 00:03:24 (in 198 s = 3m 18s); validation not known yet.
    assert got[0] == ("train: estimate 3m 25s for 2 epochs x 1,000 steps at 1,000 examples/s (validation not "
                      "measured yet, added once the first epoch ends), ends 00:03:24 (in 3m 18s); the training "
                      "steps dominate")
    # Every 10% of the epoch (10 s apart, sooner than 30 s): 100, 200, ... 900; none at 1,000 (the epoch line's).
    # At step 100 (t = 14.9 s): 900 steps left at 10/s = 90 s -> epoch ends at 104.9 s = 00:01:44; training:
    # 90 + 1,000 / 10 = 190 s -> 204.9 s = 00:03:24.
    progress_lines = got[1:]
    assert len(progress_lines) == 9
    assert progress_lines[0] == ("train: epoch 1 of 2, step 100/1,000 (10%), 1,000 examples/s; epoch ends 00:01:44 "
                                 "(in 1m 30s), training ends 00:03:24 (in 3m 10s)")
    assert progress_lines[-1].startswith("train: epoch 1 of 2, step 900/1,000 (90%)")

    # Epoch 2 begins at 124.9 s; its first step ends at 125.0, then one every 0.05 s (20 steps/s). At step 100
    # (t = 129.95): 900 steps left / 20 = 45 s, plus the 20 s validation measured after epoch 1 = 65 s -> ends at
    # 194.95 s = 00:03:14, which is also the end of training (the last epoch).
    drive_epoch(cb, clock, 1, first_step=0.1, step=0.05, steps=150)
    assert lines()[10:] == ["train: epoch 2 of 2, step 100/1,000 (10%), 2,000 examples/s; epoch ends 00:03:14 "
                            "(in 1m 05s), training ends 00:03:14 (in 1m 05s)"]


def test_estimate_names_the_catalog_wide_softmax_and_the_setting_that_changes_it(utc, lines):
    clock = FakeClock()
    cb = TrainingProgress(100, 3, 256, full_softmax_items=100_000, clock=clock, wall=clock.wall)
    cb.set_params({"steps": 100, "epochs": 3})
    cb.on_train_begin()
    # First step at 2 s, then 1 s a step: 10 s after it (done = 11) the estimate comes, before 20 steps.
    drive_epoch(cb, clock, 0, first_step=2.0, step=1.0, steps=11)
    (estimate,) = [line for line in lines() if "estimate" in line]
    # 300 - 11 = 289 steps left at 1/s; whole training 12 + 289 = 301 s = 5m 01s.
    assert estimate.startswith("train: estimate 5m 01s for 3 epochs x 100 steps at 256 examples/s")
    assert "softmax over the whole catalog (100,000 items" in estimate
    assert "retrieval.negatives=in_batch|mixed" in estimate


def test_no_softmax_note_for_a_small_catalog_and_one_estimate_only(utc, lines):
    clock = FakeClock()
    cb = TrainingProgress(100, 1, 512, full_softmax_items=1682, clock=clock, wall=clock.wall)  # 3.3 batches
    cb.set_params({"steps": 100, "epochs": 1})
    cb.on_train_begin()
    drive_epoch(cb, clock, 0, first_step=1.0, step=0.2, steps=60)
    estimates = [line for line in lines() if "estimate" in line]
    assert len(estimates) == 1 and estimates[0].endswith("the training steps dominate")


def test_a_resumed_epoch_counts_from_the_batch_it_resumes_at(utc, lines):
    clock = FakeClock()
    cb = TrainingProgress(1000, 1, 10, estimate=False, clock=clock, wall=clock.wall)
    cb.set_params({"steps": 400, "epochs": 1})  # the fit of the last 400 steps of a killed epoch
    cb.on_train_begin()
    drive_epoch(cb, clock, 0, first_step=1.0, step=1.0, steps=40)
    # Done = 600 + batches; the first line after 30 s of steps past the epoch's start: t = 30 at batch 29.
    assert lines()[0].startswith("train: epoch 1 of 1, step 630/1,000 (63%), 10 examples/s")


def test_the_early_estimate_counts_each_validation_batch_as_a_step_until_an_epoch_end_is_measured(utc, lines):
    """S = 1,000 steps, E = 2 epochs, 100 examples a step, 50 validation batches.

    The first step ends at 5 s, then a step every 0.1 s (10 steps/s): the estimate comes after 20 more steps
    (done = 21, t = 7 s). Steps left: 979 + 1,000 at 10/s = 197.9 s; each epoch end is guessed at 50 batches
    at 10/s = 5 s, two of them 10 s: 207.9 s left, 7 + 207.9 = 214.9 s = 3m 35s in all, ending at 00:03:34
    (in 208 s = 3m 28s).
    """
    clock = FakeClock()
    cb = TrainingProgress(1000, 2, 100, validation_steps=50, clock=clock, wall=clock.wall)
    cb.set_params({"steps": 1000, "epochs": 2})
    cb.on_train_begin()
    drive_epoch(cb, clock, 0, first_step=5.0, step=0.1, steps=1000, validation=20.0)
    got = lines()
    assert got[0] == ("train: estimate 3m 35s for 2 epochs x 1,000 steps at 1,000 examples/s (validation about 5s "
                      "after each epoch for its 50 batches, measured once the first epoch ends), ends 00:03:34 "
                      "(in 3m 28s); the training steps dominate")
    # Once measured (20 s after epoch 1), the guess is gone: epoch 2 at 20 steps/s, at step 100 (t = 129.95 s):
    # 900 / 20 = 45 s + 20 s = 65 s left -> 00:03:14, as without validation batches.
    drive_epoch(cb, clock, 1, first_step=0.1, step=0.05, steps=150)
    assert lines()[-1] == ("train: epoch 2 of 2, step 100/1,000 (10%), 2,000 examples/s; epoch ends 00:03:14 "
                           "(in 1m 05s), training ends 00:03:14 (in 1m 05s)")
