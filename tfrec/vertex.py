"""Vertex AI custom training: the folders it names in the environment, and the tuning metric.

Vertex AI sets, for a job with a base output directory ``BASE``:

    AIP_MODEL_DIR            BASE/model/        the model a Vertex endpoint loads (saved_model.pb at its top)
    AIP_CHECKPOINT_DIR       BASE/checkpoints/
    AIP_TENSORBOARD_LOG_DIR  BASE/logs/         (a Vertex TensorBoard instance reads it live)

and, in a hyperparameter tuning trial, ``CLOUD_ML_HP_METRIC_FILE`` and
``CLOUD_ML_TRIAL_ID``. Each folder may be a ``gs://`` path, written through
``tf.io.gfile`` (:mod:`tfrec.fileio`). :func:`output_dirs` reads the folders;
:func:`report_tuning_metric` reports the validation metric with ``cloudml-hypertune``
(it writes one JSON line per report to the metric file).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from tfrec import fileio
from tfrec.errors import UserError

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


def output_dirs(environ: dict | None = None) -> OutputDirs:
    """The ``AIP_*`` folders set in ``environ`` (default ``os.environ``), trailing slashes dropped.

    A ``gs://`` folder is written through ``tf.io.gfile`` directly, not through
    Vertex AI's ``/gcs`` mount (Cloud Storage FUSE): every output goes through
    :mod:`tfrec.fileio`, which also works where no bucket is mounted.
    """
    env = os.environ if environ is None else environ

    def folder(name: str) -> str | None:
        return (env.get(name) or "").rstrip("/") or None

    return OutputDirs(folder("AIP_MODEL_DIR"), folder("AIP_CHECKPOINT_DIR"), folder("AIP_TENSORBOARD_LOG_DIR"))


@dataclass
class Folders:
    """Where one run writes: :func:`output_folders`' answer (a ``Path`` for a local folder, a ``str`` URL)."""

    checkpoint_dir: fileio.Location
    tensorboard_dir: fileio.Location
    model_dir: str | None  # None: the export goes to JOB_DIR/export


def output_folders(job_dir: str | os.PathLike, outputs: OutputDirs | None) -> Folders:
    """The run's checkpoint and TensorBoard folders (``outputs``' or the job dir's) and the model dir.

    Any folder may be a ``tf.io.gfile`` URL (``gs://``, ``ram://``...); one whose
    scheme no file system is registered for (``s3://`` without tensorflow-io) is
    refused with one line before any work.
    """
    outputs = outputs or OutputDirs()
    for folder in (job_dir, outputs.model_dir, outputs.checkpoint_dir, outputs.tensorboard_dir):
        if folder is not None:
            check_scheme(str(folder))
    return Folders(fileio.location(outputs.checkpoint_dir or fileio.join(job_dir, "checkpoints")),
                   fileio.location(outputs.tensorboard_dir or fileio.join(job_dir, "tensorboard")), outputs.model_dir)


def check_scheme(path: str) -> None:
    """Refuses a URL whose scheme ``tf.io.gfile`` cannot write (a one-line :class:`UserError`)."""
    if not fileio.is_url(path):
        return
    import tensorflow as tf  # heavy: only a URL job dir needs it; trainer.task's --help stays fast

    scheme = path.split("://", 1)[0]
    registered = sorted(s for s in tf.io.gfile.get_registered_schemes() if s)
    if scheme not in registered:
        raise UserError(f"{path}: no tf.io.gfile file system for '{scheme}://' (this TensorFlow has "
                        f"{', '.join(s + '://' for s in registered)}); import the package that registers it "
                        "(e.g. tensorflow-io for s3://) or write to a local or mounted folder")


def parent(path: str) -> str:
    """``gs://b/base/model`` -> ``gs://b/base`` (``os.path.dirname`` that keeps a URL's ``//``)."""
    head, _, _ = path.rstrip("/").rpartition("/")
    return head or "."


def metric_tag(metric: str) -> str:
    """``recall@10`` -> ``recall_at_10``: the ``metricId`` a tuning config names (letters, digits, ``_``)."""
    return metric.replace("@", "_at_")


def report_kept_epoch(metric: str, checkpoint_dir: str | os.PathLike) -> bool:
    """Reports the kept epoch's validation ``metric`` (from ``checkpoint_dir/state.json``) in a tuning trial."""
    state = json.loads(fileio.read_text(fileio.join(checkpoint_dir, "state.json")))
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
    import hypertune  # optional (cloudml-hypertune): installed on Vertex AI tuning jobs only

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=metric_tag(metric), metric_value=float(value), global_step=int(step))
    log.info("tuning: reported %s=%.4f at step %d", metric_tag(metric), value, step)
    return True
