"""Picks the tf.distribute strategy: TPU, several GPUs, several workers, or default; precision and layer seeds."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from typing import Iterator

import tensorflow as tf
from tf_keras.src import backend as keras_backend  # its layer-seed generator has no public handle

from tfrec.config import RuntimeConfig
from tfrec.errors import UserError

log = logging.getLogger("tfrec")


def _cluster() -> tf.distribute.cluster_resolver.TFConfigClusterResolver:
    """TF's own reader of ``TF_CONFIG`` (an empty cluster when unset); a one-line UserError when malformed."""
    raw = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        # The resolver would raise a bare JSONDecodeError (or AttributeError on a non-object) deep inside TF.
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(parsed, dict):
        raise UserError("TF_CONFIG: expected a JSON object with 'cluster' and 'task'")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _tf_config_workers() -> int:
    jobs = _cluster().cluster_spec().as_dict()
    return len(jobs.get("worker", [])) + len(jobs.get("chief", []))


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


def kind(strategy: tf.distribute.Strategy) -> str:
    """``tpu``, ``multi_worker``, ``mirrored`` or ``default`` for a strategy object."""
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return "tpu"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def set_precision(policy: str) -> None:
    """Sets the Keras global dtype policy (``train.mixed_precision``; ``none`` = float32).

    Layers take the policy in force when they are built, so :func:`tfrec.run.build_model`
    sets it just before building the model and puts float32 back right after:
    evaluation, baselines and export layers stay float32. Towers cast their outputs,
    and the retrieval task its logits and loss, to float32.
    """
    tf.keras.mixed_precision.set_global_policy("float32" if policy == "none" else policy)


def host_preprocessing(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
    """Whether strings must become ints in the host's tf.data pipeline (TPUs have no string ops;
    XLA compiles no tokeniser or lookup table)."""
    return jit_compile or kind(strategy) == "tpu"


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    resolver = _cluster()
    if not resolver.task_type:
        return True
    if resolver.task_type in ("chief", "master"):  # "master": AI Platform's name for the chief
        return True
    jobs = set(resolver.cluster_spec().jobs)
    return resolver.task_type == "worker" and (resolver.task_id or 0) == 0 and not {"chief", "master"} & jobs


@contextlib.contextmanager
def layer_seed(seed: int) -> Iterator[None]:
    """Keras layers built inside draw their initial weights from ``seed`` alone; the caller's draws go on after.

    tf-keras seeds every unseeded initialiser from one thread-local generator
    (Python's ``random`` when none is set), which only ``tf.keras.utils.set_random_seed``
    sets, along with Python's, NumPy's and TensorFlow's global seeds. Swapping
    that generator alone for the body seeds the layers and touches nothing else.
    """
    state = keras_backend._SEED_GENERATOR
    previous = getattr(state, "generator", None)
    state.generator = random.Random(seed)
    try:
        yield
    finally:
        state.generator = previous
