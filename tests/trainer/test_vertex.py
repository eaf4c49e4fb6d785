"""Vertex AI custom training: the AIP_* folders and the tuning metric."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tfrec import vertex

REPO = Path(__file__).resolve().parents[2]


def test_output_dirs_and_parent():
    dirs = vertex.output_dirs({"AIP_MODEL_DIR": "gs://b/base/model/", "AIP_CHECKPOINT_DIR": "gs://b/base/ckpt/"})
    assert (dirs.model_dir, dirs.checkpoint_dir, dirs.tensorboard_dir) == ("gs://b/base/model", "gs://b/base/ckpt",
                                                                           None)
    assert vertex.parent(dirs.model_dir) == "gs://b/base"  # not "gs:/b/base" as pathlib would make it
    assert vertex.metric_tag("recall@10") == "recall_at_10"


def test_gs_folders_are_written_through_gfile_not_a_mount():
    # Before: gs:// became /gcs/... (Vertex AI's Cloud Storage FUSE mount); now tf.io.gfile writes it directly.
    folders = vertex.output_folders("gs://b/base", vertex.output_dirs({"AIP_CHECKPOINT_DIR": "gs://b/base/ckpt/"}))
    assert (folders.checkpoint_dir, folders.tensorboard_dir) == ("gs://b/base/ckpt", "gs://b/base/tensorboard")
    local = vertex.output_folders("runs/x", None)
    assert (local.checkpoint_dir, local.tensorboard_dir) == (Path("runs/x/checkpoints"), Path("runs/x/tensorboard"))


def test_url_output_folder_without_a_file_system_is_refused(capsys):
    from trainer import task

    assert task.main(["--preset", "smoke", "--job-dir", "s3://bucket/run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: s3://bucket/run: no tf.io.gfile file system for 's3://' (this TensorFlow has file://, gs://, "
        "ram://); import the package that registers it (e.g. tensorflow-io for s3://) or write to a local or "
        "mounted folder")


def test_smoke_run_writes_where_vertex_says(tmp_path):
    env = dict(os.environ, AIP_MODEL_DIR=str(tmp_path / "model") + "/", AIP_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
               AIP_TENSORBOARD_LOG_DIR=str(tmp_path / "logs"),
               CLOUD_ML_HP_METRIC_FILE=str(tmp_path / "hp" / "output.metrics"), CLOUD_ML_TRIAL_ID="7",
               PYTHONPATH=str(REPO))  # this checkout, not an installed copy
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--preset", "smoke", "--epochs", "1",
                           "--set", "eval.baselines=false"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "model"
    assert (model / "saved_model.pb").is_file() and (model / "variables" / "variables.index").is_file()
    assert (model / "smoke" / "1" / "saved_model.pb").is_file()  # the TF Serving layout beside it
    models_config = (model / "models.config").read_text()
    assert 'name: "smoke"' in models_config and "variables" not in models_config
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert (tmp_path / "ckpt" / "best" / "weights.index").is_file()
    assert not (tmp_path / "checkpoints").exists()  # the job dir is the parent of AIP_MODEL_DIR
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "params.yaml").is_file()
    lines = (tmp_path / "hp" / "output.metrics").read_text().splitlines()
    metric = json.loads(lines[-1])
    assert metric["trial"] == "7" and float(metric["global_step"]) > 0
    best = json.loads((tmp_path / "ckpt" / "state.json").read_text())["best"]
    assert abs(float(metric["recall_at_10"]) - best) < 1e-6
