"""Re-export a finished run without retraining.

    python -m serving.export --job-dir DIR [--index brute_force|ivf|scann|all] [--k 100]

Rebuilds the run's model from ``DIR/params.yaml`` and its best weights
(:func:`tfrec.trained.load_trained`), then publishes a new version per index kind under ``DIR/export`` with
:func:`tfrec.export.savedmodel.export_run` (what training itself calls).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import serving  # noqa: F401  (environment first)
from tfrec.cli import setup_logging
from tfrec.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-dir", "--job_dir", dest="job_dir", required=True)
    parser.add_argument("--index", choices=["brute_force", "ivf", "scann", "all"])
    parser.add_argument("--k", type=int)
    parser.add_argument("--debug", action="store_true")
    args, _ = parser.parse_known_args(argv)
    setup_logging(args.debug)

    def run() -> None:
        # heavy: TensorFlow and the model code load after the arguments parse, so --help is instant
        from tfrec import evaluate
        from tfrec.data import pipeline
        from tfrec.export.savedmodel import export_run
        from tfrec.trained import load_trained

        cfg, model, data = load_trained(args.job_dir)
        items = pipeline.item_features(data.catalog, np.arange(len(data.catalog)))
        item_embeddings = evaluate.embed(model.item_tower, items, progress="embedding the catalog")
        export_run(cfg, args.job_dir, model, data, item_embeddings, index=args.index, k=args.k)

    return run_main(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
