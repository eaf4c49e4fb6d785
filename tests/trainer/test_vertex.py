"""Vertex AI custom training: the AIP_* folders and the tuning metric (the issue's done-when line)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tfrec import vertex

REPO = Path(__file__).resolve().parents[2]


def test_output_dirs_and_parent():
    dirs = vertex.output_dirs({"AIP_MODEL_DIR": "gs://b/base/model/", "AIP_CHECKPOINT_DIR": "gs://b/base/ckpt/"},
                              mount="/nonexistent")
    assert (dirs.model_dir, dirs.checkpoint_dir, dirs.tensorboard_dir) == ("gs://b/base/model", "gs://b/base/ckpt",
                                                                           None)
    assert vertex.parent(dirs.model_dir) == "gs://b/base"  # not "gs:/b/base" as pathlib would make it
    assert vertex.metric_tag("recall@10") == "recall_at_10"


def test_url_output_folder_is_refused_with_the_way_out(capsys):
    from trainer import task

    assert task.main(["--preset", "smoke", "--job-dir", "s3://bucket/run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: s3://bucket/run: outputs go to local or mounted folders only; on Vertex AI use /gcs/BUCKET/... "
        "(Cloud Storage FUSE), elsewhere mount the bucket (gcsfuse)")


def test_gs_folders_go_through_the_vertex_mount(tmp_path):
    (tmp_path / "gcs").mkdir()
    dirs = vertex.output_dirs({"AIP_MODEL_DIR": "gs://b/base/model/"}, mount=str(tmp_path / "gcs"))
    assert dirs.model_dir == f"{tmp_path}/gcs/b/base/model"
    assert vertex.output_dirs({"AIP_MODEL_DIR": "gs://b/m"}, mount=str(tmp_path / "none")).model_dir == "gs://b/m"


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
