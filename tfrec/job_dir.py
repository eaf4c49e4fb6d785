"""The job dir's identity: ``params.yaml`` written once, and a refusal to resume a run of another config."""

from __future__ import annotations

import os

import tensorflow as tf

from tfrec import config as config_lib
from tfrec import fileio, training
from tfrec.config import Config
from tfrec.errors import UserError


def prepare(cfg: Config, job: str | os.PathLike, write_params: bool = True) -> None:
    """Creates ``job`` (a local folder or a ``tf.io.gfile`` URL), refuses one holding a different run, and
    writes ``params.yaml``."""
    try:
        fileio.makedirs(job)
        check(job, cfg)
        if write_params:
            fileio.write_text(fileio.join(job, "params.yaml"), config_lib.to_yaml(cfg))
    except OSError as e:
        raise UserError(f"{job}: cannot write the job dir ({e.strerror or e}); pick another --job-dir") from None
    except tf.errors.OpError as e:  # a URL: "<scheme> ... not implemented", permission denied, ...
        raise UserError(f"{job}: cannot write the job dir ({e.message.splitlines()[0]}); pick another --job-dir"
                        ) from None


def check(job: str | os.PathLike, cfg: Config) -> None:
    """Refuses to resume a job dir written by a different training config.

    Keys ``cfg`` still leaves to the data (``resolve.pending``) are compared
    once the data has chosen them (``fit`` prepares the job dir again then).
    """
    previous = fileio.join(job, "params.yaml")
    if not fileio.isfile(previous) or not fileio.exists(fileio.join(job, "checkpoints")):
        return
    old = training_flat(config_lib.from_dict(config_lib.read_yaml(previous)))
    new = training_flat(cfg)
    open_keys = set(config_lib.resolve.pending(cfg))
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in open_keys)
    if differing:
        raise UserError(f"{job}: holds a run with a different config ({', '.join(differing[:8])}); "
                        "use another --job-dir or delete it")


def training_flat(cfg: Config) -> dict:
    """The config keys that change what a checkpoint means (export/eval settings may change)."""
    flat = training.flatten(config_lib.to_dict(cfg))
    keep = ("data", "model", "retrieval", "ranking", "eval.cold_items_fraction")  # the cold hold-out changes the data
    served = ("retrieval.hybrid_fusion", "retrieval.hybrid_weight", "retrieval.hybrid_baseline")  # chosen after training, written back
    return {k: v for k, v in flat.items() if (k.split(".")[0] in keep or k in keep) and k not in served}
