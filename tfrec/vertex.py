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

import logging
import os
from dataclasses import dataclass

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


def check_output_folders(*folders: str | os.PathLike | None) -> None:
    """Refuses a URL output folder with a way out: outputs are written with local file I/O.

    (pathlib would turn ``gs://b/x`` into a local folder named ``gs:``.)
    """
    from tfrec.errors import UserError

    for folder in folders:
        if folder is not None and "://" in str(folder):
            raise UserError(f"{folder}: outputs go to local or mounted folders only; on Vertex AI use "
                            "/gcs/BUCKET/... (Cloud Storage FUSE), elsewhere mount the bucket (gcsfuse)")


def parent(path: str) -> str:
    """``gs://b/base/model`` -> ``gs://b/base`` (``os.path.dirname`` that keeps a URL's ``//``)."""
    head, _, _ = path.rstrip("/").rpartition("/")
    return head or "."


def metric_tag(metric: str) -> str:
    """``recall@10`` -> ``recall_at_10``: the ``metricId`` a tuning config names (letters, digits, ``_``)."""
    return metric.replace("@", "_at_")


def report_tuning_metric(metric: str, value: float, step: int) -> bool:
    """Reports ``value`` to Vertex AI hyperparameter tuning when the trial asks for one.

    Does nothing outside a tuning trial (neither ``CLOUD_ML_HP_METRIC_FILE`` nor
    ``CLOUD_ML_TRIAL_ID`` set). Returns whether a metric was written.

    Args:
      metric: the config's name, e.g. ``recall@10``; reported as ``recall_at_10``.
      value: the kept epoch's validation value.
      step: the global training step it was reached at.
    """
    if not (os.environ.get("CLOUD_ML_HP_METRIC_FILE") or os.environ.get("CLOUD_ML_TRIAL_ID")):
        return False
    import hypertune  # cloudml-hypertune

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=metric_tag(metric), metric_value=float(value), global_step=int(step))
    log.info("tuning: reported %s=%.4f at step %d", metric_tag(metric), value, step)
    return True
