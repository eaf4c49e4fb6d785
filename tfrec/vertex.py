"""Vertex AI custom training: the folders it names in the environment, and the tuning metric.

Vertex AI sets, for a job with a base output directory ``BASE``:

    AIP_MODEL_DIR            BASE/model/        the model a Vertex endpoint loads (saved_model.pb at its top)
    AIP_CHECKPOINT_DIR       BASE/checkpoints/
    AIP_TENSORBOARD_LOG_DIR  BASE/logs/         (a Vertex TensorBoard instance reads it live)

and, in a hyperparameter tuning trial, ``CLOUD_ML_HP_METRIC_FILE`` and
``CLOUD_ML_TRIAL_ID``. Each may be a ``gs://`` path. :func:`output_dirs` reads
the folders; :func:`report_tuning_metric` reports the validation metric with
``cloudml-hypertune`` (it writes one JSON line per report to the metric file).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tfrec")


@dataclass
class OutputDirs:
    """Where a run's outputs go when the platform names a folder (None: inside the job dir).

    Attributes:
      model_dir: the serving SavedModel's folder (``AIP_MODEL_DIR``).
      checkpoint_dir: checkpoints (``AIP_CHECKPOINT_DIR``).
      tensorboard_dir: TensorBoard event files (``AIP_TENSORBOARD_LOG_DIR``).
    """

    model_dir: str | None = None
    checkpoint_dir: str | None = None
    tensorboard_dir: str | None = None


def on_fuse(path: str, mount: str = "/gcs") -> str:
    """``gs://bucket/x`` -> ``/gcs/bucket/x`` where Vertex AI mounts Cloud Storage (Cloud Storage FUSE).

    Vertex AI training machines mount every bucket the job may read at ``/gcs``;
    through it plain file I/O reaches the bucket. Without the mount the path is
    returned as it is.
    """
    if path.startswith("gs://") and os.path.isdir(mount):
        return f"{mount}/{path[len('gs://'):]}"
    return path


def output_dirs(environ: dict | None = None, mount: str = "/gcs") -> OutputDirs:
    """The ``AIP_*`` folders set in ``environ`` (default ``os.environ``), trailing slashes dropped,
    ``gs://`` ones read through the ``mount`` when it exists (:func:`on_fuse`)."""
    env = os.environ if environ is None else environ

    def folder(name: str) -> str | None:
        value = (env.get(name) or "").rstrip("/")
        return on_fuse(value, mount) if value else None

    return OutputDirs(folder("AIP_MODEL_DIR"), folder("AIP_CHECKPOINT_DIR"), folder("AIP_TENSORBOARD_LOG_DIR"))


@dataclass
class Folders:
    """Where one run writes: :func:`output_folders`' answer (all set)."""

    checkpoint_dir: Path
    tensorboard_dir: Path
    model_dir: str | None  # None: the export goes to JOB_DIR/export


def output_folders(job_dir: str | os.PathLike, outputs: OutputDirs | None) -> Folders:
    """The run's checkpoint and TensorBoard folders (``outputs``' or the job dir's) and the model dir.

    Refuses a URL with a way out: outputs are written with local file I/O, and
    pathlib would turn ``gs://b/x`` into a local folder named ``gs:``.
    """
    from tfrec.errors import UserError

    outputs = outputs or OutputDirs()
    for folder in (job_dir, outputs.model_dir, outputs.checkpoint_dir, outputs.tensorboard_dir):
        if folder is not None and "://" in str(folder):
            raise UserError(f"{folder}: outputs go to local or mounted folders only; on Vertex AI use "
                            "/gcs/BUCKET/... (Cloud Storage FUSE), elsewhere mount the bucket (gcsfuse)")
    job = Path(job_dir)
    return Folders(Path(outputs.checkpoint_dir or job / "checkpoints"),
                   Path(outputs.tensorboard_dir or job / "tensorboard"), outputs.model_dir)


def parent(path: str) -> str:
    """``gs://b/base/model`` -> ``gs://b/base`` (``os.path.dirname`` that keeps a URL's ``//``)."""
    head, _, _ = path.rstrip("/").rpartition("/")
    return head or "."


def metric_tag(metric: str) -> str:
    """``recall@10`` -> ``recall_at_10``: the ``metricId`` a tuning config names (letters, digits, ``_``)."""
    return metric.replace("@", "_at_")


def report_kept_epoch(metric: str, checkpoint_dir: str | os.PathLike) -> bool:
    """Reports the kept epoch's validation ``metric`` (from ``checkpoint_dir/state.json``) in a tuning trial."""
    state = json.loads((Path(checkpoint_dir) / "state.json").read_text())
    return report_tuning_metric(metric, state["best"], state["best_epoch"] + 1)


def report_tuning_metric(metric: str, value: float, step: int) -> bool:
    """Reports ``value`` to Vertex AI hyperparameter tuning when the trial asks for one.

    Does nothing outside a tuning trial (neither ``CLOUD_ML_HP_METRIC_FILE`` nor
    ``CLOUD_ML_TRIAL_ID`` set). Returns whether a metric was written.

    Args:
      metric: the config's name, e.g. ``recall@10``; reported as ``recall_at_10``.
      value: the kept epoch's validation value.
      step: when it was reached (the kept epoch, counted from 1).
    """
    if not (os.environ.get("CLOUD_ML_HP_METRIC_FILE") or os.environ.get("CLOUD_ML_TRIAL_ID")):
        return False
    import hypertune  # cloudml-hypertune

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=metric_tag(metric), metric_value=float(value), global_step=int(step))
    log.info("tuning: reported %s=%.4f at step %d", metric_tag(metric), value, step)
    return True
