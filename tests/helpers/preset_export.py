"""The export a preset's run leaves in ``JOB/export``, from an untrained model shrunk to tiny sizes.

The preset's data, query inputs (``query_text`` and/or ``history_item_ids``), item ids, evaluation
settings (so ``export.exclude_history``) and model names are kept; only the sizes shrink (a random tiny
BERT, small layers), so the SavedModels have the very signatures the preset's real run exports, in a few
seconds and without training. For tests of the documented serving commands.

Usage::

    from tests.helpers.preset_export import write_preset_export
    write_preset_export("movielens", root / "runs" / "movielens", index="all")
"""

from __future__ import annotations

from pathlib import Path

import tfrec
from tfrec import evaluate
from tfrec import run as run_lib
from tfrec.export.savedmodel import export_run

TINY = ["model.query_encoder.checkpoint=random://tiny", "model.query_encoder.max_length=16",
        "model.embedding_dim=8", "model.hidden_units=[16]", "model.item_id_embedding_dim=8",
        "export.min_recall=0"]  # untrained: an approximate index is published whatever its recall


def write_preset_export(preset: str, job_dir: Path, index: str = "brute_force") -> list[Path]:
    """Builds ``preset``'s model (tiny sizes, random weights) on its data and exports it to ``job_dir/export``.

    Returns the published version folders (one per index kind of ``index``).
    """
    cfg = tfrec.load_config(preset=preset, overrides=TINY)
    data = run_lib.load_data(cfg, job_dir)
    model = run_lib.build_model(cfg, data)
    features = run_lib.build_features(cfg, data, model)
    items = evaluate.embed(model.item_tower, features.all_items)
    return export_run(cfg, job_dir, model, data, items, index=index)
