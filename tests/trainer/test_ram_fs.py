"""A whole run with its job dir and its data on ``ram://``: every output goes through tf.io.gfile.

``ram://`` is TensorFlow's in-memory file system and lives in one process, so the CLI's entry function
(``trainer.task.main``) runs in this process. Whatever pathlib or ``open`` would write by mistake lands in the
working folder (as a folder named ``ram:``), which must stay empty.
"""

from __future__ import annotations

import json

import pytest
import tensorflow as tf
import yaml

from tfrec import fileio, training
from tfrec.data import synthetic
from tfrec.export import layout
from trainer import task

ROOT = "ram://ramfs-test"


def _files(folder: str) -> set[str]:
    """Every file under ``folder``, relative to it."""
    return {f"{top[len(folder):].strip('/')}/{name}".lstrip("/")
            for top, _, names in tf.io.gfile.walk(folder) for name in names}


@pytest.fixture(scope="module")
def ram_data(tmp_path_factory) -> str:
    """The smoke data set copied to ``ram://ramfs-test/data``."""
    local = tmp_path_factory.mktemp("smoke-data")
    synthetic.write_smoke(str(local))
    fileio.rmtree(ROOT)  # ram:// lives as long as the process: start from nothing
    folder = f"{ROOT}/data"
    tf.io.gfile.makedirs(folder)
    for name in ("items.csv", "interactions.csv"):
        tf.io.gfile.copy(str(local / name), f"{folder}/{name}", overwrite=True)
    return folder


def test_smoke_trains_evaluates_and_exports_on_ram(ram_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job = f"{ROOT}/job"
    args = ["--preset", "smoke", "--job-dir", job, "--set", f"data.items.path={ram_data}/items.csv",
            "--set", f"data.interactions.path={ram_data}/interactions.csv",
            "--set", "model.query_encoder.trainable_layers=0",  # frozen: its encodings go to the job cache
            "--set", "eval.baselines=[popularity]"]
    assert task.main(args) == 0
    files = _files(job)
    for name in ("params.yaml", "eval.json", "timings.json", "checkpoints/state.json",
                 "checkpoints/best/best.json", "checkpoints/best/weights.index", "export/models.config",
                 "export/batching_parameters.txt", "export/smoke/1/saved_model.pb",
                 "export/smoke/1/variables/variables.index", "export/smoke/1/assets.extra/items.tsv",
                 "tensorboard/projector/metadata.tsv", "tensorboard/projector/projector_config.pbtxt"):
        assert name in files, sorted(files)
    state = json.loads(fileio.read_text(f"{job}/checkpoints/state.json"))
    assert f"checkpoints/{state['checkpoint']}.index" in files  # the checkpoint it names, relative to its folder
    for prefix in ("tensorboard/train/events.", "tensorboard/validation/events.", "tensorboard/hparams/events.",
                   "cache/encodings/query-", "cache/encodings/item-", "cache/baselines/popularity-"):
        assert any(f.startswith(prefix) for f in files), (prefix, sorted(files))
    assert not any("/." in f or f.startswith(".") for f in files)  # no temporary file left behind
    params = yaml.safe_load(fileio.read_text(f"{job}/params.yaml"))
    assert params["data"]["items"]["path"] == f"{ram_data}/items.csv"
    report = json.loads(fileio.read_text(f"{job}/eval.json"))
    assert 0 < report["model"]["recall@10"] <= 1 and "popularity" in report["baselines"]
    assert 'name: "smoke"' in fileio.read_text(f"{job}/export/models.config")
    assert list(tmp_path.iterdir()) == []  # nothing was written to the local disk

    import tfrec

    served = tfrec.load_export(f"{job}/export/smoke/1")
    out = served.signatures["serving_default"](query_text=tf.constant(["a b", "c"]),
                                               exclude_item_ids=tf.constant([[""], [""]]))
    catalog = {line.split("\t")[0] for line in fileio.read_text(f"{job}/export/smoke/1/assets.extra/items.tsv"
                                                                  ).splitlines()[1:]}
    assert out["item_ids"].shape == (2, 10) and {i.decode() for i in out["item_ids"].numpy().ravel()} <= catalog

    # The same command again resumes from the ram:// checkpoints and reuses the job cache (the CLI logs to stdout).
    capsys.readouterr()
    assert task.main([*args, "--set", "export.enabled=false"]) == 0
    logged = capsys.readouterr().out
    assert "train: already complete in ram://ramfs-test/job/checkpoints" in logged
    assert "cache: reused" in logged and "popularity baseline reused" in logged
    assert list(tmp_path.iterdir()) == []

    # Re-exporting the finished run reads params.yaml and the best weights from ram:// too.
    from serving import export as export_cli

    assert export_cli.main(["--job-dir", job]) == 0
    assert "export/smoke/2/saved_model.pb" in _files(job)
    assert list(tmp_path.iterdir()) == []


def test_unregistered_scheme_is_refused_in_one_line(capsys):
    assert task.main(["--preset", "smoke", "--job-dir", "nosuchfs://bucket/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nosuchfs://bucket/run: no tf.io.gfile file system for 'nosuchfs://'"), err
    assert "ram://" in err and len(err.splitlines()) == 1


def test_publish_on_ram_copies_saved_model_pb_last(monkeypatch):
    base = f"{ROOT}/publish/m"
    copied = []
    real_copy = tf.io.gfile.copy
    monkeypatch.setattr(tf.io.gfile, "copy", lambda src, dst, overwrite=False: copied.append(dst) or real_copy(
        src, dst, overwrite=overwrite))

    def write(folder: str) -> None:
        tf.io.gfile.makedirs(f"{folder}/variables")
        for name in ("saved_model.pb", "variables/variables.index", "fingerprint.pb"):
            with tf.io.gfile.GFile(f"{folder}/{name}", "w") as f:
                f.write(name)

    assert layout.publish_version(base, write) == f"{base}/1"
    assert copied[-1] == f"{base}/1/saved_model.pb" and len(copied) == 3
    assert layout.publish_version(base, write) == f"{base}/2" and layout.next_version(base) == 3
    with pytest.raises(ValueError):
        layout.publish_version(base, write, version=2)
    config = layout.write_models_config(f"{ROOT}/publish", layout.model_names(f"{ROOT}/publish"))
    assert layout.read_models_config(config) == {"m": f"{ROOT}/publish/m"}


class _Weights(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable([1.0, 2.0])


@pytest.mark.parametrize("killed_at", ["copying", "after_copy"])
def test_best_swap_killed_on_ram_recovers_the_complete_copy(killed_at):
    """On ram:// ``best`` is replaced by copying ``best.new`` (best.json last): a kill leaves one of them whole."""
    directory = f"{ROOT}/ckpt-{killed_at}"
    model = _Weights()
    if killed_at == "copying":  # an older best, its marker already deleted, half replaced
        model.w.assign([9.0, 9.0])
        model.save_weights(f"{directory}/best/weights")
        model.w.assign([1.0, 2.0])
    model.save_weights(f"{directory}/best.new/weights")
    fileio.write_text(f"{directory}/best.new/best.json", json.dumps({"epoch": 3, "value": 0.5}))
    if killed_at == "after_copy":  # copied whole, killed before best.new was deleted and state.json written
        fileio.copy_tree(f"{directory}/best.new", f"{directory}/best", last="best.json")
    model.w.assign([0.0, 0.0])
    saver = training.CheckpointAndEarlyStop(directory, tf.train.Checkpoint(model=model), "val_recall@10", 2)
    assert not tf.io.gfile.exists(f"{directory}/best.new")
    assert json.loads(fileio.read_text(f"{directory}/best/best.json"))["epoch"] == 3
    assert saver.state["best_epoch"] == 3 and saver.state["best"] == 0.5
    model.load_weights(f"{directory}/best/weights")
    assert model.w.numpy().tolist() == [1.0, 2.0]


def test_rewriting_a_file_on_ram_replaces_it():
    """TensorFlow's ram:// file system appends to an existing file opened with "w"; fileio's writes replace it."""
    path = f"{ROOT}/rewrite/params.yaml"
    fileio.rmtree(f"{ROOT}/rewrite")
    fileio.write_text(path, "a: 1\nb: 2\n")
    fileio.write_text(path, "a: 3\n")
    assert fileio.read_text(path) == "a: 3\n"
    fileio.write_atomic(path, lambda f: f.write("long text " * 10))
    fileio.write_atomic(path, lambda f: f.write("short"))
    assert fileio.read_text(path) == "short"
