"""Two fits in one process, then the stages called by hand: each writes into its own job dir only."""

from __future__ import annotations

import tensorflow as tf

import tfrec
from tfrec import run as stages

# A frozen encoder, so each run keeps its encodings in JOB_DIR/cache/encodings; popularity's result is kept in
# JOB_DIR/cache/baselines.
SETS = ["model.query_encoder.trainable_layers=0", "train.epochs=1", "train.max_steps_per_epoch=2",
        "eval.baselines=[popularity]", "export.enabled=false"]


def snapshot(folder) -> dict[str, int]:
    """Every file under ``folder``: relative path -> modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_two_fits_then_stages_by_hand_write_only_into_their_own_job_dirs(tmp_path):
    first, second, by_hand = tmp_path / "first", tmp_path / "second", tmp_path / "by_hand"
    tfrec.fit(tfrec.load_config(preset="smoke", overrides=SETS), first)
    after_first = snapshot(first)
    assert [k for k in after_first if k.startswith("cache/encodings/")]

    tfrec.fit(tfrec.load_config(preset="smoke", overrides=SETS + ["train.seed=5"]), second)
    assert snapshot(first) == after_first
    after_second = snapshot(second)
    assert [k for k in after_second if k.startswith("cache/baselines/popularity-")]

    # Another seed: another encoder and budget, whose encodings and baseline would be new files in a cache.
    cfg = tfrec.load_config(preset="smoke", overrides=SETS + ["train.seed=6"])
    data = stages.load_data(cfg, by_hand)
    model = stages.build_model(cfg, data)
    features = stages.build_features(cfg, data, model)
    stages.train(cfg, model, data, features, tf.distribute.get_strategy(), by_hand / "checkpoints",
                 by_hand / "tensorboard")
    evaluation = stages.evaluate_model(cfg, model, data, features)
    (published,) = stages.export_model(cfg, by_hand, model, data, evaluation)
    assert evaluation.baselines["popularity"]["recall@10"] >= 0.0 and published.parent.parent == by_hand / "export"
    assert snapshot(first) == after_first and snapshot(second) == after_second
    assert not (by_hand / "cache").exists()  # no cache given: nothing kept
