"""``runtime.strategy=multi_worker``: two worker processes on 127.0.0.1 train the smoke preset together.

Worker 0 is the chief: it alone writes the job dir (checkpoints, TensorBoard,
eval.json, export). Worker 1 runs every collective op of training (gradient
all-reduces, the cross-replica negatives' all-gathers, checkpoint saves) but
writes into a temporary folder that is gone when it exits.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(job: Path, sets: list[str]) -> tuple[list[int], list[str]]:
    """Two ``trainer.task`` processes under one TF_CONFIG; returns their exit codes and outputs."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    args = [sys.executable, "-m", "trainer.task", "--preset", "smoke", "--job-dir", str(job),
            "--set", "runtime.strategy=multi_worker"]
    for s in sets:
        args += ["--set", s]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in procs:  # a worker waiting on a dead peer would hang: never leave one behind
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    job = tmp_path_factory.mktemp("multi_worker") / "job"
    codes, outputs = _run_workers(job, ["train.epochs=2", "train.max_steps_per_epoch=2", "eval.baselines=false",
                                        "retrieval.cross_replica_negatives=true"])
    return job, codes, outputs


def test_both_workers_finish(two_workers):
    _, codes, outputs = two_workers
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    for out in outputs:
        assert "CollectiveAllReduceStrategy with 2 replica(s)" in out


def test_workers_ran_the_same_steps(two_workers):
    """The epoch loss is the global batch's, so both workers log the same numbers."""
    _, _, outputs = two_workers
    epochs = [re.findall(r"epoch \d/2 +loss=\S+", out) for out in outputs]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1]


def test_one_set_of_artefacts_from_the_chief(two_workers):
    job, _, outputs = two_workers
    assert (job / "params.yaml").is_file()
    assert (job / "checkpoints" / "state.json").is_file()
    assert json.loads((job / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert json.loads((job / "eval.json").read_text())["training"]["epochs_run"] == 2
    assert (job / "export" / "smoke" / "1" / "saved_model.pb").is_file()
    assert list((job / "tensorboard" / "train").glob("events.out.tfevents.*"))
    # Nothing from the non-chief in the job dir: no worker folders, one event file per TensorBoard run.
    assert not [p for p in job.rglob("*") if "worker" in p.name]
    assert len(list((job / "tensorboard" / "train").glob("events.out.tfevents.*"))) == 1
    assert "eval: wrote" in outputs[0] and "eval: wrote" not in outputs[1]


def test_non_chief_scratch_is_removed(two_workers):
    _, _, outputs = two_workers
    found = re.search(r"non-chief worker: writing to (\S+)", outputs[1])
    assert found, outputs[1][-2000:]
    assert not Path(found.group(1)).exists()
    assert "non-chief" not in outputs[0]


def test_streaming_workers_each_read_their_own_shards(split_files, tmp_path):
    """data.interactions.streaming: worker i reads shards i, i+2 of the 4 (file-level sharding by worker)."""
    root, shards, _ = split_files
    codes, outputs = _run_workers(tmp_path / "job", [
        f"data.interactions.path={shards}", f"data.items.path={root / 'items.csv'}", "data.split.method=files",
        f"data.split.validation_path={root / 'validation.csv'}", f"data.split.test_path={root / 'test.csv'}",
        "data.interactions.streaming=true", "train.epochs=1", "train.max_steps_per_epoch=3", "export.enabled=false",
        "eval.baselines=false"])
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    for worker, out in enumerate(outputs):
        mine = ", ".join(f"train-0000{i}-of-00004.tfrecord" for i in (worker, worker + 2))
        assert f"stream: input pipeline {worker} of 2 reads 2 of 4 shards ({mine})" in out, out[-3000:]
    epochs = [re.findall(r"epoch \d/1 +loss=\S+", out) for out in outputs]
    assert len(epochs[0]) == 1 and epochs[0] == epochs[1]  # one global batch: the same loss on both
