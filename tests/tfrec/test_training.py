"""tfrec/training.py: what TensorBoard receives from a short smoke run, read back from the event files."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec import run as stages
from tfrec import summaries, training

STEPS, EPOCHS, EVERY = 3, 2, 2


def read_events(folder) -> dict[str, dict[str, dict[int, np.ndarray]]]:
    """{run folder name: {tag: {step: value}}} for every event file under ``folder``."""
    runs: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
    for path in tf.io.gfile.glob(str(folder / "*" / "events.out.tfevents.*")):
        run = path.split("/")[-2]
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                runs[run][value.tag][event.step] = tf.make_ndarray(value.tensor)
    return runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.query_encoder.trainable_layers=0", f"train.epochs={EPOCHS}", f"train.max_steps_per_epoch={STEPS}",
        f"train.log_every_steps={EVERY}", "train.histogram_every_epochs=1", "train.warmup_fraction=0.4",
        "train.early_stopping_patience=5", "eval.baselines=false"])
    job = tmp_path_factory.mktemp("tb")
    data = stages.load_data(cfg, job)
    model = stages.build_model(cfg, data)
    features = stages.build_features(cfg, data, model)
    stages.train(cfg, model, data, features, tf.distribute.get_strategy(), job / "checkpoints", job / "tb")
    return cfg, data, read_events(job / "tb")


def test_one_learning_rate_curve_equal_to_the_schedule_at_each_step(trained):
    cfg, _, runs = trained
    lr_tags = [(run, tag) for run, tags in runs.items() for tag in tags if "learning_rate" in tag]
    assert lr_tags == [("train", "batch_learning_rate")]
    total, warmup, peak = STEPS * EPOCHS, int(STEPS * EPOCHS * 0.4), cfg.train.learning_rate
    assert warmup == 2  # so steps 2, 4, 6 sit at the top of the warm-up, mid-decay and the end of decay

    # Hand-worked: at step s the rate is peak * (s + 1) / warmup while s < warmup, else
    # peak * (1 - 0.95 * (s - warmup) / (total - warmup)): 2 -> peak, 4 -> 0.525 peak, 6 -> 0.05 peak.
    logged = runs["train"]["batch_learning_rate"]
    assert sorted(logged) == [2, 4, 6]
    for step, expected in ((2, 1.0), (4, 0.525), (6, 0.05)):
        assert float(logged[step]) == pytest.approx(peak * expected, rel=1e-6)


def test_training_loss_every_n_steps_and_validation_per_epoch(trained):
    _, _, runs = trained
    assert sorted(runs["train"]["batch_loss"]) == [2, 4, 6]  # optimizer steps, every train.log_every_steps
    assert sorted(runs["train"]["epoch_loss"]) == [0, 1]
    validation = runs["validation"]
    for tag in ("epoch_loss", "epoch_recall@10", "epoch_ndcg@10"):
        assert sorted(validation[tag]) == [0, 1], tag
    assert all(np.isfinite(v) and v > 0 for v in validation["epoch_loss"].values())
    assert all(0.0 <= v <= 1.0 for v in validation["epoch_recall@10"].values())
    # examples/s per logged step and per epoch (tfrec.progress.TrainingProgress). The count starts at the end of
    # each epoch's first step (steps 1 and 4: tracing, the validation pass before it), so of the logged steps
    # 2, 4, 6 only 2 and 6 have a rate.
    assert sorted(runs["train"]["batch_examples_per_second"]) == [2, 6]
    assert sorted(runs["train"]["epoch_examples_per_second"]) == [0, 1]
    assert all(v > 0 for v in runs["train"]["batch_examples_per_second"].values())
    names = [tag for tags in runs.values() for tag in tags]
    assert "batch_recall@10" in runs["train"] and not [t for t in names if "batch_batch_" in t]
    histograms = [tag for tag in runs["train"] if tag.endswith("/histogram")]
    assert histograms and all(sorted(runs["train"][t]) == [0, 1] for t in histograms)


def test_projector_metadata_has_title_and_categories(trained, tmp_path):
    _, data, _ = trained
    embeddings = np.random.default_rng(0).normal(size=(len(data.catalog), 4)).astype(np.float32)
    summaries.write_projector(str(tmp_path), embeddings, data.catalog)
    rows = (tmp_path / "projector" / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    assert header[:2] == ["item_id", "title"] and header[2:] == list(data.catalog.categorical)
    assert len(header) >= 3 and len(rows) == len(data.catalog) + 1
    first = rows[1].split("\t")
    assert first[0] == data.catalog.item_ids[0] and first[1] == data.catalog.titles[0]
    assert first[2] == data.catalog.categorical[header[2]][0]
    assert "metadata.tsv" in (tmp_path / "projector" / "projector_config.pbtxt").read_text()


def test_hparams_hold_the_final_metrics(tmp_path):
    summaries.write_hparams(str(tmp_path), {"train.epochs": 2, "train.seed": None}, {"test_recall@10": 0.25})
    runs = read_events(tmp_path)
    assert float(runs["hparams"]["test_recall@10"][0]) == pytest.approx(0.25)
    assert "_hparams_/session_start_info" in runs["hparams"]


def test_keras_backup_and_restore_cannot_resume_early_stopping(tmp_path):
    """Why tfrec.training.CheckpointAndEarlyStop is kept: a killed run resumed with Keras' BackupAndRestore
    forgets EarlyStopping's and ModelCheckpoint(save_best_only)'s best value and patience (its backup holds
    the model, the optimiser and the epoch/batch counters only), and a finished run leaves no backup, so
    running the same command again trains from scratch. If a Keras release changes either, this fails."""
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
    model.compile(tf.keras.optimizers.SGD(0.1), "mse")
    x = np.arange(8, dtype=np.float32).reshape(-1, 1) / 8

    class Killed(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    stop = tf.keras.callbacks.EarlyStopping(monitor="loss", patience=3)
    backup = tf.keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=True)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, 2 * x, epochs=4, callbacks=[backup, stop, Killed()], verbose=0)
    assert np.isfinite(stop.best)  # EarlyStopping had a best value when the run was killed...
    (index,) = tf.io.gfile.glob(str(tmp_path / "backup" / "*" / "*.index"))
    saved = [name for name, _ in tf.train.list_variables(index[: -len(".index")])]
    assert any("ckpt_saved_epoch" in name for name in saved) and any(n.startswith("model/") for n in saved)
    assert not any("best" in name or "wait" in name for name in saved), saved  # ...that the backup lacks

    model.fit(x, 2 * x, epochs=4, callbacks=[backup], verbose=0)  # resumes, finishes
    assert not tf.io.gfile.glob(str(tmp_path / "backup" / "*" / "*.index"))  # and leaves nothing to resume


@pytest.mark.parametrize("epoch, batch, want", [
    (-1, 0, [(0, 4, 6, 0)]),  # a fresh run: one fit
    (0, 0, [(1, 4, 6, 6)]),  # killed after epoch 1: the other three epochs, skipping its 6 batches
    (0, 2, [(1, 2, 4, 8), (2, 4, 6, 12)]),  # killed in epoch 2 after batch 2: its last 4 steps, then the rest
    (2, 5, [(3, 4, 1, 23)]),  # killed in the last epoch before its last batch: that batch only
])
def test_resume_plan_trains_each_batch_once(tmp_path, epoch, batch, want):
    training.write_state(tmp_path, {"epoch": epoch, "batch": batch, "best": 0.1, "best_epoch": 0, "wait": 0,
                                    "stopped": False})
    saver = training.CheckpointAndEarlyStop(str(tmp_path), tf.train.Checkpoint(), "val_recall@10", 3)
    plan = saver.fits(steps=6, epochs=4)
    assert plan == want
    trained = [skip + k for first, last, n, skip in plan for k in range(n * (last - first))]
    assert trained == list(range(want[0][3], 24))  # every batch after the checkpoint, once, in order
