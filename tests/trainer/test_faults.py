"""Real faults injected into ``python -m trainer.task`` and ``python -m serving.export`` subprocesses.

* SIGKILL at an epoch end, inside an epoch (``train.checkpoint_every_steps``) and at a random moment: the same
  command run again resumes from the checkpoint that ``state.json`` names and ends with the same metrics as an
  uninterrupted run of the same seed.
* SIGKILL inside an export, after the SavedModel was written and before it was published: no new version
  becomes visible, a server keeps serving the previous one, and the next export publishes cleanly.
* A job dir that cannot be created, and a checkpoint write that fails mid-run, both on a really full disk (a
  4 MB tmpfs filled up; needs root, skipped elsewhere) and under ``RLIMIT_FSIZE`` (EFBIG, the portable stand-in):
  one line on stderr, exit code 2, the last complete checkpoint stays "latest", and once there is space again the
  same command resumes from it.

(A job dir written by a different config is refused in ``test_task.py``.)

Why the metrics can be compared exactly: these runs freeze the encoder (``trainable_layers=0``), so the
training step has no dropout and hence no random state outside the data order; the shuffled, repeated input
stream is seeded, and a resumed run skips the batches already trained on, so it sees exactly the batches of
the uninterrupted run (``trainer/task.py``). The remaining difference is float round-off from thread
scheduling, which CPU kernels here do not show; the tolerance is 1e-6.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import task

REPO = Path(__file__).resolve().parents[2]
EPOCHS, STEPS, EVERY = 4, 6, 2
RUN = ["--preset", "smoke", "--set", f"train.epochs={EPOCHS}", "--set", f"train.max_steps_per_epoch={STEPS}",
       "--set", f"train.checkpoint_every_steps={EVERY}", "--set", "model.query_encoder.trainable_layers=0",
       "--set", "train.early_stopping_patience=10", "--set", "eval.baselines=false"]
NO_EXPORT = ["--set", "export.enabled=false"]
TIMEOUT = 900
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def trainer(job: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.task", "--job-dir", str(job), *RUN, *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def kill_when(proc: subprocess.Popen, predicate) -> str:
    """Reads stdout until ``predicate(line)``, then SIGKILLs the process; returns what was read."""
    seen = []
    deadline = time.time() + TIMEOUT
    for line in proc.stdout:
        seen.append(line)
        if predicate(line) or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def state(job: Path) -> dict:
    return json.loads((job / "checkpoints" / "state.json").read_text())


def metrics(job: Path) -> dict:
    return json.loads((job / "eval.json").read_text())


def assert_same_result(job: Path, reference: Path) -> None:
    got, want = metrics(job), metrics(reference)
    assert got["training"]["best_epoch"] == want["training"]["best_epoch"]
    assert got["training"]["epochs_run"] == want["training"]["epochs_run"] == EPOCHS
    assert got["model"].keys() == want["model"].keys()
    for key, value in want["model"].items():
        assert got["model"][key] == pytest.approx(value, abs=1e-6), key


def assert_one_line_error(rc: int, err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, f"exit {rc}:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (and its export, version 1)."""
    job = tmp_path_factory.mktemp("faults") / "reference"
    rc, out, err = finish(trainer(job))
    assert rc == 0, err
    assert state(job)["step"] == EPOCHS * STEPS
    assert (job / "export" / "smoke" / "1" / "saved_model.pb").is_file()
    return job


# ---------------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_after_an_epoch_resumes_to_the_same_result(reference, tmp_path):
    job = tmp_path / "job"
    seen = kill_when(trainer(job, *NO_EXPORT), lambda line: f"epoch 1/{EPOCHS}" in line)
    assert not (job / "eval.json").exists()
    killed_at = state(job)
    assert killed_at["epoch"] >= 0, seen
    rc, out, err = finish(trainer(job, *NO_EXPORT))
    assert rc == 0, err
    assert f"resume: restored epoch {killed_at['epoch'] + 1}" in out
    assert f"epoch 1/{EPOCHS}" not in out  # the first epoch is not trained again
    assert state(job)["step"] == EPOCHS * STEPS
    assert_same_result(job, reference)


def test_sigkill_inside_an_epoch_loses_at_most_checkpoint_every_steps(reference, tmp_path):
    job = tmp_path / "job"
    seen = kill_when(trainer(job, *NO_EXPORT), lambda line: "checkpoint: epoch 2, batch 2 " in line)
    killed_at = state(job)
    # The kill came right after the step-8 checkpoint (epoch 2, batch 2); a later one may have landed since.
    assert killed_at["step"] >= STEPS + 2, (killed_at, seen)
    rc, out, err = finish(trainer(job, *NO_EXPORT))
    assert rc == 0, err
    epoch, batch = killed_at["epoch"] + 1, killed_at["batch"]
    inside = f", batch {batch}/{STEPS}" if batch else ""
    assert f"resume: restored epoch {epoch}{inside} from " in out
    assert f"epoch {epoch}/{EPOCHS}" not in out  # the completed epochs are not trained again
    # The resumed run trained exactly the steps after the checkpoint: at most EVERY - 1 steps of the killed
    # run (those after its last checkpoint) were trained twice, and none was skipped.
    assert state(job)["step"] == EPOCHS * STEPS
    assert_same_result(job, reference)


def test_sigkill_at_a_random_moment(reference, tmp_path):
    """Killed a random 0-300 ms after a random one of the 12 training events (step checkpoints and epoch ends):
    inside a step, inside a validation pass, or between a checkpoint write and state.json."""
    job = tmp_path / "job"
    rng = random.Random(time.time_ns())
    event, delay = rng.randrange(1, EPOCHS * (STEPS // EVERY)), rng.uniform(0.0, 0.3)
    events = 0

    def moment(line: str) -> bool:
        nonlocal events
        events += "checkpoint: epoch" in line or f"/{EPOCHS}  loss=" in line
        if events >= event:
            time.sleep(delay)
            return True
        return False

    seen = kill_when(trainer(job, *NO_EXPORT), moment)
    rc, out, err = finish(trainer(job, *NO_EXPORT))
    assert rc == 0, f"killed {delay:.2f}s after event {event}\n{seen}\n{err}"
    assert "resume: restored" in out
    assert_same_result(job, reference)


# ----------------------------------------------------------------------------------------------- export
KILLED_EXPORT = """
import os, signal, sys
import serving  # environment first
import tensorflow as tf
from serving import export

real_save = tf.saved_model.save

def save_then_die(*args, **kwargs):
    real_save(*args, **kwargs)  # the SavedModel is complete in the temporary folder ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before assets.extra and the rename

tf.saved_model.save = save_then_die
sys.exit(export.main(["--job-dir", sys.argv[1]]))
"""


def test_killed_export_publishes_nothing_and_the_server_keeps_version_1(reference, tmp_path):
    from tfrec.export import layout
    from serving.server import ModelServer

    job = tmp_path / "job"
    shutil.copytree(reference, job)
    base = job / "export" / "smoke"
    server = ModelServer({"smoke": str(base)}, grpc_port=None, rest_port=None)
    server.poll_once()
    assert server.model("smoke").version == 1

    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(job)], cwd=REPO, capture_output=True,
                            text=True, timeout=TIMEOUT, env=ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    temps = [p for p in base.iterdir() if p.name.startswith(layout.TMP_PREFIX)]
    assert len(temps) == 1 and (temps[0] / "saved_model.pb").is_file()  # killed mid-publish, half written
    assert not (temps[0] / "assets.extra").exists()
    assert layout.latest_version(base) == 1 and sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["1"]
    server.poll_once()
    assert server.model("smoke").version == 1  # still serving the previous version

    again = subprocess.run([sys.executable, "-m", "serving.export", "--job-dir", str(job)], cwd=REPO,
                           capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # the stale temporary folder is gone
    assert (base / "2" / "assets.extra" / "export_report.json").is_file()
    server.poll_once()
    assert server.model("smoke").version == 2


# ------------------------------------------------------------------------------------ unwritable, full
def test_job_dir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file where a folder is needed\n")
    # Under a regular file: fails even for root, unlike a chmod'ed folder.
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--preset", "smoke", "--job-dir",
                           str(blocker / "sub")], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                          env=ENV)
    assert_one_line_error(proc.returncode, proc.stderr, f"{blocker / 'sub'}: cannot write the job dir (Not a "
                          "directory); pick another --job-dir")
    assert task.main(["--preset", "smoke", "--job-dir", str(blocker)]) == 2
    assert_one_line_error(2, capsys.readouterr().err, f"{blocker}: cannot write the job dir (File exists)")
    assert blocker.read_text().startswith("a regular file")


def _limit_file_size() -> None:  # preexec_fn: files may not grow past 100 kB (a checkpoint is ~180 kB)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MB tmpfs (root only; skipped elsewhere). Yields (folder, fill) where fill() leaves ~60 kB free."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
                      ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the RLIMIT_FSIZE variant covers the logic")

    def fill() -> Path:
        st = os.statvfs(mount)
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 60_000))
        return ballast

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["file_size_limit", "disk_full"])
def test_write_failure_mid_run_keeps_the_last_checkpoint(fault, reference, tmp_path, request):
    """The completed 4-epoch run is extended to 5 epochs; its first checkpoint write in epoch 5 fails."""
    if fault == "disk_full":
        folder, fill = request.getfixturevalue("full_disk")
    else:
        folder, fill = tmp_path, None
    job = folder / "job"
    shutil.copytree(reference, job, ignore=shutil.ignore_patterns("export", "tensorboard"))
    before = state(job)
    more = [*NO_EXPORT, "--set", f"train.epochs={EPOCHS + 1}"]
    if fill:
        ballast = fill()
        rc, out, err = finish(trainer(job, *more))
    else:
        rc, out, err = finish(trainer(job, *more, preexec_fn=_limit_file_size))
    line = assert_one_line_error(rc, err, f"{job / 'checkpoints'}: could not write a checkpoint (",
                                 f"the last complete one ({before['checkpoint']}) is kept",
                                 "rerun the same command to resume")
    assert ("no space left" if fill else "too large") in line.lower()
    assert f"resume: restored epoch {EPOCHS}" in out  # it got as far as training epoch 5
    assert state(job) == before  # "latest" still names the complete checkpoint
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(job / "checkpoints" / before["checkpoint"]))
    assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == EPOCHS * STEPS
    if fill:
        ballast.unlink()
    rc, out, err = finish(trainer(job, *more))  # space again: the same command resumes and finishes
    assert rc == 0, err
    assert f"resume: restored epoch {EPOCHS} from " in out
    assert state(job)["step"] == (EPOCHS + 1) * STEPS
