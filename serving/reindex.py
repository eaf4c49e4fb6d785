"""Re-embed a new or changed catalog with the trained item tower and publish it, without retraining.

    python -m serving.reindex --job-dir DIR --items NEW_ITEMS_FILE [--index brute_force|ivf|scann|all] [--k 100]

The new file is read with the run's item settings (``data.items`` in
``DIR/params.yaml``: id, text and categorical columns; the format follows the
file's extension unless the run named one). Items the model never saw get
the id embedding's out-of-vocabulary row, so their text (and categorical
features) carry them. The approximate indexes pass the same recall gate as at
export, then a new version is published next to the old ones.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import serving  # noqa: F401  (environment first)
import numpy as np

from tfrec import config as config_lib
from tfrec.cli import run_main, setup_logging
from tfrec.data import dataset

log = logging.getLogger("tfrec")


def reindex(job_dir: str, items_path: str, index: str | None = None, k: int | None = None) -> list:
    """Embeds ``items_path`` and publishes a new version per index kind; returns the version folders.

    Works for every query shape the run has (``query_text``, ``history_item_ids`` or both): the
    approximate indexes' recall gate embeds the test split's queries as the query tower reads them
    (:func:`tfrec.export.savedmodel.test_queries`). A served history is read through the run's own
    catalog, so a history naming an item the run never saw counts that item as padding.
    """
    # heavy: these load TensorFlow, so only once a reindex runs (not for --help)
    from tfrec import evaluate
    from tfrec.data import pipeline
    from tfrec.export.savedmodel import export_run
    from tfrec.trained import load_trained

    cfg, model, data = load_trained(job_dir)
    fmt = cfg.data.items.format
    if fmt == "recbole" and not items_path.endswith((".item", ".inter", ".user")):
        fmt = "auto"
    data_cfg = config_lib.updated(cfg, {"data.items.path": items_path, "data.items.format": fmt}).data
    catalog, skipped = dataset.load_catalog(data_cfg, base_dir=job_dir)
    known = set(data.catalog.item_ids)
    new = sum(1 for i in catalog.item_ids if i not in known)
    log.info("reindex: %d items in %s (%d not seen in training, %d dropped from the old catalog)", len(catalog),
             items_path, new, len(known - set(catalog.item_ids)))
    features = pipeline.item_features(catalog, np.arange(len(catalog)))
    item_embeddings = evaluate.embed(model.item_tower, features, batch_size=512, progress="embedding items")
    counts = dict(data.counts, items=len(catalog), new_items=new)
    new_data = replace(data, catalog=catalog, counts=counts, skipped=skipped)
    # The test split's history rows index the run's catalog, which the query tower keeps: its queries embed
    # as at training whatever the new catalog holds.
    return export_run(cfg, job_dir, model, new_data, item_embeddings, index=index, k=k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.reindex", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-dir", "--job_dir", dest="job_dir", required=True)
    parser.add_argument("--items", required=True, help="the new catalog file (same columns as the training one)")
    parser.add_argument("--index", choices=["brute_force", "ivf", "scann", "all"])
    parser.add_argument("--k", type=int)
    parser.add_argument("--debug", action="store_true")
    args, _ = parser.parse_known_args(argv)
    setup_logging(args.debug)
    return run_main(lambda: reindex(args.job_dir, args.items, args.index, args.k), args.debug)


if __name__ == "__main__":
    sys.exit(main())
