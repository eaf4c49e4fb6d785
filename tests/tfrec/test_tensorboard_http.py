"""What TensorBoard shows of a run, read through its own HTTP API (what the browser reads), not from our files.

A tiny smoke run (one epoch of 3 steps, no baselines, no export) is written by ``tfrec.run.fit``; ``tensorboard``
is started on its ``tensorboard/`` folder as a child process on a port it picks, and stopped afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import tfrec
from tfrec import run as stages
from tests.helpers.servers import http

STEPS = 3


def wait_for(read, what: str, seconds: float = 90):
    """``read()`` once it is truthy (TensorBoard loads runs and decides its plugins in the background)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = read()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard never showed {what}")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """(port, config) of a TensorBoard serving a finished smoke run."""
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "train.epochs=1", f"train.max_steps_per_epoch={STEPS}", "train.log_every_steps=1", "eval.baselines=false",
        "export.enabled=false", "model.query_encoder.trainable_layers=0"])
    job = tmp_path_factory.mktemp("board")
    stages.fit(cfg, job)
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(job / "tensorboard"),
                             "--host", "127.0.0.1", "--port", "0", "--load_fast=false"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        def port():
            if proc.poll() is not None:
                raise AssertionError("tensorboard exited:\n" + "".join(lines)[-2000:])
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(lines))
            return int(found.group(1)) if found else None

        yield wait_for(port, "its address"), cfg
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_scalars_projector_and_hparams_plugins_are_active(board):
    port, _ = board

    def active():
        _, listing = http(port, "/data/plugins_listing")
        return all(listing.get(p, {}).get("enabled") for p in ("scalars", "hparams", "projector"))

    wait_for(active, "active scalars, hparams and projector plugins")


def test_scalars_per_step_loss_examples_per_second_and_validation_metrics_named_once(board):
    port, _ = board
    tags = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and "validation" in r[1] else None)(
        http(port, "/data/plugin/scalars/tags")), "the scalars of the train and validation runs")
    train, validation = set(tags["train"]), set(tags["validation"])
    assert {"batch_loss", "batch_learning_rate", "batch_examples_per_second", "epoch_loss",
            "epoch_examples_per_second"} <= train
    assert "batch_recall@10" in train  # the in-batch metric per step, its name read once
    assert {"epoch_loss", "epoch_recall@10", "epoch_ndcg@10", "epoch_mrr"} <= validation  # full-catalog validation
    everything = [tag for run in tags.values() for tag in run]
    assert not [tag for tag in everything if "batch_batch_" in tag]
    assert {"test_recall@10", "test_mrr"} <= set(tags["hparams"])


def test_projector_serves_the_item_embeddings_with_their_metadata(board):
    port, cfg = board
    runs = wait_for(lambda: http(port, "/data/plugin/projector/runs")[1], "a projector run")
    assert runs == ["projector"]
    status, info = http(port, "/data/plugin/projector/info?run=projector")
    assert status == 200
    (embedding,) = info["embeddings"]
    assert embedding["tensorShape"] == [160, cfg.model.embedding_dim]  # the smoke catalog: 160 items
    assert embedding["metadataPath"] == "metadata.tsv"
    status, metadata = http(port, "/data/plugin/projector/metadata?run=projector&name="
                            + embedding["tensorName"])
    rows = metadata.splitlines()
    assert status == 200 and rows[0].split("\t") == ["item_id", "title", "genre"] and len(rows) == 1 + 160


def test_hparams_list_the_settings_runs_are_compared_by_and_no_paths(board):
    port, _ = board
    # As the browser asks: a JSON body with its content type (without it the plugin answers 400).
    request = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
                                     json.dumps({"experimentName": ""}).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        experiment = json.loads(response.read())
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.embedding_dim", "retrieval.negatives", "retrieval.temperature", "ranking.weight",
            "train.learning_rate", "train.batch_size", "train.epochs"} <= names
    assert "train.log_every_steps" in names  # set for this run (its default is 10)
    assert not [n for n in names if n.startswith("data.") and n.endswith(("path", "_column", "_columns"))]
    assert "data.interactions.path" not in names and "export.model_name" not in names
    assert "runtime.strategy" not in names and "train.cache_frozen_encoders" not in names  # left at the default
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"test_recall@10", "test_mrr"}
