"""``python -m trainer.task``: arguments -> :func:`tfrec.load_config` -> :func:`tfrec.fit`.

    python -m trainer.task [--preset NAME] [--config FILE.yaml] [--set dotted.key=value ...] [--job-dir DIR]

Without ``--preset``, a ``--config`` starts from the data-agnostic base
(``default``: the keys that depend on the data are chosen from it, each logged
with its reason), and no arguments at all run the ``movielens`` demo. The job
dir defaults to the parent of ``AIP_MODEL_DIR`` when Vertex AI sets it, else
``runs/<preset>``, or ``runs/<config file name>`` for a ``--config`` without
``--preset``. It receives ``params.yaml`` (the resolved config),
``checkpoints/`` (rerunning the same command resumes), ``tensorboard/``,
``eval.json`` and ``export/``. On Vertex AI, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` take the checkpoints and TensorBoard logs, and
``AIP_MODEL_DIR`` the export (the serving SavedModel at its top); see
:mod:`tfrec.vertex`. Config keys are also flags (``--train.epochs 3``, or
``--epochs 3``: tuning trials pass them so); other unknown flags are refused.
Exit code 0 on success; 2 on a user error, with one line on stderr (``--debug``
shows the traceback); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import tfrec
from tfrec import vertex
from tfrec.cli import flags_as_overrides, run_main, setup_logging
from tfrec.config import config_keys, list_presets, resolve, to_yaml
from tfrec.config.parse import model_name_from_file
from tfrec.errors import UserError

log = logging.getLogger("tfrec")


def default_job_dir(preset: str | None, config_file: str | None = None) -> str:
    """``AIP_MODEL_DIR``'s parent on Vertex AI, else ``runs/<preset>`` (``runs/<file name>`` for a ``--config``
    without ``--preset``)."""
    model_dir = vertex.output_dirs().model_dir
    if model_dir:
        return vertex.parent(model_dir)
    return os.path.join("runs", preset or (model_name_from_file(config_file) if config_file else "movielens"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help=f"one of: {', '.join(list_presets())} (default: movielens, or default "
                        "with --config: settings chosen from your data)")
    parser.add_argument("--config", help="a YAML file of overrides (applied after the preset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, repeatable, applied last (e.g. --set train.epochs=3)")
    parser.add_argument("--job-dir", "--job_dir", dest="job_dir",
                        help="output folder (default: runs/<preset>, or runs/<config file name>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow logs")
    args, unknown = parser.parse_known_args(argv)
    # Tuning passes --<parameter_id> <value>: a config key's flag; anything else is refused by name.
    flags = [o for a in parser._actions for o in a.option_strings]
    args.set = flags_as_overrides(unknown, flags, config_keys()) + args.set
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as e:  # an unknown flag: one line, before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.debug)

    def run() -> None:
        if args.print_config:  # the YAML alone on stdout: the config's log lines go to stderr
            with contextlib.redirect_stdout(sys.stderr):
                cfg = tfrec.load_config(args.config, preset=args.preset, overrides=args.set)
                if resolve.pending(cfg):  # printed as the base has them; the run chooses them from the data
                    log.info("config: chosen from the data when it is read: %s", ", ".join(resolve.pending(cfg)))
            print(to_yaml(cfg), end="")
            return
        cfg = tfrec.load_config(args.config, preset=args.preset, overrides=args.set)
        job_dir = args.job_dir or default_job_dir(args.preset, args.config)  # local, or a tf.io.gfile URL (gs://)
        log.info("tfrec: preset=%s%s job_dir=%s", cfg.name, f" config={args.config}" if args.config else "",
                 job_dir)
        aip = vertex.output_dirs()  # Vertex AI's AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR
        run = tfrec.fit(cfg, job_dir, aip)
        if run.metrics:  # the chief: a tuning trial gets the kept epoch's validation metric
            folders = vertex.output_folders(job_dir, aip)
            vertex.report_kept_epoch(cfg.train.early_stopping_metric, folders.checkpoint_dir)

    return run_main(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
