"""A rerun of the same command reuses what the killed run finished, and validates on the same sample.

Real ``python -m trainer.task`` subprocesses on the smoke preset with a frozen encoder (so encodings are cached,
and a resumed run's weights equal an uninterrupted run's; see ``test_faults.py``), validating on a seeded sample of
20 of the 60 validation queries:

* killed after epoch 1, then resumed: epoch 2's validation metrics equal the uninterrupted run's, which holds only
  if the resumed run validates on the very same 20 queries;
* killed as evaluation starts (at "train: kept epoch"), then rerun: the log says the query and item encodings
  were reused from the job dir (nothing encoded again), and the run writes ``eval.json`` and ``timings.json``
  and ends with the line saying where the time went.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = ["--preset", "smoke", "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=6",
       "--set", "model.query_encoder.trainable_layers=0", "--set", "train.early_stopping_patience=10",
       "--set", "eval.validation_max_queries=20", "--set", "export.enabled=false"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TIMEOUT = 900


def trainer(job: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.task", "--job-dir", str(job), *RUN], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_at(proc: subprocess.Popen, marker: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert marker in "".join(seen), "".join(seen)[-3000:]
    return "".join(seen)


def epoch_line(out: str, n: int) -> str:
    line = next(x for x in out.splitlines() if f"epoch {n}/2 " in x)
    return re.sub(r"^\S+ |\(\d+s(, [\d,]+ examples/s)?\)$", "", line).strip()  # without the clock, duration, rate


def test_rerun_after_kills_reuses_encodings_and_validates_on_the_same_sample(tmp_path):
    reference = finish(trainer(tmp_path / "reference"))
    assert "val_recall@10" in epoch_line(reference, 2)

    job = tmp_path / "job"
    first = kill_at(trainer(job), "epoch 1/2")
    assert "cache: reused" not in first
    second = kill_at(trainer(job), "train: kept epoch")  # evaluation starts next
    assert "resume: restored epoch 1" in second
    assert epoch_line(second, 2) == epoch_line(reference, 2)  # the same 20 validation queries after the restart
    assert "cache: reused" in second  # encodings from the killed first run

    third = finish(trainer(job))
    assert re.search(r"cache: reused \d+ query encodings", third), third[-3000:]
    assert re.search(r"cache: reused \d+ item encodings", third), third[-3000:]
    report = json.loads((job / "eval.json").read_text())
    assert report["model"] == json.loads((tmp_path / "reference" / "eval.json").read_text())["model"]
    timings = json.loads((job / "timings.json").read_text())
    assert {"read", "encode", "evaluate", "baseline:popularity"} <= set(timings["stages"])
    last = third.strip().splitlines()[-1]
    assert " done in " in f" {last}" and "time: " in last and "peak RSS" in last, last
