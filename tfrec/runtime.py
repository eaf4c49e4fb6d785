"""Picks the tf.distribute strategy: TPU, several GPUs, several workers, or default."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from tfrec.config import RuntimeConfig
from tfrec.errors import UserError

log = logging.getLogger("tfrec")


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError:
        raise UserError("TF_CONFIG: not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_strategy(address: str | None) -> tf.distribute.Strategy:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(cfg: RuntimeConfig) -> tf.distribute.Strategy:
    """Returns the strategy named by ``runtime.strategy`` (``auto`` detects one)."""
    kind = cfg.strategy
    if kind == "auto":
        if cfg.tpu or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"):
            kind = "tpu"
        elif _tf_config_workers() > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "tpu":
        try:
            strategy = _tpu_strategy(cfg.tpu or os.environ.get("COLAB_TPU_ADDR"))
        except (ValueError, tf.errors.OpError) as e:
            raise UserError(f"runtime.strategy=tpu: no TPU found ({str(e).splitlines()[0]})") from None
    elif kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("task", {})
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
