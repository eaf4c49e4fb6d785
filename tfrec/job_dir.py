"""The job dir's identity: ``params.yaml`` written once, and a refusal to resume a run of another config."""

from __future__ import annotations

from pathlib import Path

from tfrec import config as config_lib
from tfrec import training
from tfrec.config import Config
from tfrec.errors import UserError


def prepare(cfg: Config, job: Path, write_params: bool = True) -> None:
    """Creates ``job``, refuses one holding a different run, and writes ``params.yaml``."""
    try:
        job.mkdir(parents=True, exist_ok=True)
        check(job, cfg)
        if write_params:
            (job / "params.yaml").write_text(config_lib.to_yaml(cfg))
    except OSError as e:
        raise UserError(f"{job}: cannot write the job dir ({e.strerror or e}); pick another --job-dir") from None


def check(job: Path, cfg: Config) -> None:
    """Refuses to resume a job dir written by a different training config."""
    previous = job / "params.yaml"
    if not previous.is_file() or not (job / "checkpoints").exists():
        return
    old = training_flat(config_lib.from_dict(config_lib.read_yaml(previous)))
    new = training_flat(cfg)
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differing:
        raise UserError(f"{job}: holds a run with a different config ({', '.join(differing[:8])}); "
                        "use another --job-dir or delete it")


def training_flat(cfg: Config) -> dict:
    """The config keys that change what a checkpoint means (export/eval settings may change)."""
    flat = training.flatten(config_lib.to_dict(cfg))
    keep = ("data", "model", "retrieval", "ranking", "eval.cold_items_fraction")  # the cold hold-out changes the data
    return {k: v for k, v in flat.items() if k.split(".")[0] in keep or k in keep}
