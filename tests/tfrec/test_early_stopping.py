"""One early-stopping rule: the model's checkpoint callback and every learned baseline stop at the same epoch."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec import baseline_runs, baselines, early_stopping, evaluate, training
from tfrec import config as config_lib
from tfrec.data import dataset
from tests.tfrec.data.test_history_items import history_cfg

# (validation values per epoch, patience, the 1-based epoch after which training stops), worked by hand:
CASES = [
    # best 0.3 at epoch 2; epochs 3 and 4 do not beat it (0.3 at epoch 5 would not either): 2 waits -> stop at 4.
    ([0.1, 0.3, 0.2, 0.25, 0.3, 0.4], 2, 4),
    # patience 0: the first epoch without improvement (epoch 3) stops.
    ([0.1, 0.2, 0.15, 0.3, 0.4, 0.5], 0, 3),
    # patience 1 behaves as 0 (Keras' meaning): epoch 2 equals the best, which is no improvement.
    ([0.5, 0.5, 0.9, 0.9, 0.9, 0.9], 1, 2),
    # improves every other epoch: patience 1 would stop at epoch 2; patience 2 never stops (all 6 epochs).
    ([0.1, 0.0, 0.2, 0.1, 0.3, 0.2], 2, 6),
]
EPOCHS = 6


def rule_stop(values, patience):
    rule = early_stopping.EarlyStopping(patience)
    for epoch, value in enumerate(values):
        if rule.update(epoch, value) == early_stopping.STOP:
            return epoch + 1
    return len(values)


@pytest.mark.parametrize("values,patience,stop", CASES)
def test_the_rule_stops_at_the_hand_worked_epoch(values, patience, stop):
    assert rule_stop(values, patience) == stop


def test_the_rule_counts_on_from_a_resumed_state_and_nan_never_improves():
    rule = early_stopping.EarlyStopping(2, best=0.4, best_epoch=1, wait=1)  # as state.json keeps it
    assert rule.update(3, float("nan")) == early_stopping.STOP and rule.best == 0.4 and rule.wait == 2


class _Scripted(tf.keras.callbacks.Callback):
    """Writes the next scripted validation value into the epoch's logs (before the checkpoint callback reads it)."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs["val_recall@10"] = self.values[epoch]


@pytest.mark.parametrize("values,patience,stop", CASES)
def test_the_models_checkpoint_callback_stops_at_the_same_epoch(values, patience, stop, tmp_path):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones([4, 2], np.float32), np.zeros([4, 1], np.float32)
    model(x)
    saver = training.CheckpointAndEarlyStop(str(tmp_path), tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                            "val_recall@10", patience)
    history = model.fit(x, y, epochs=EPOCHS, callbacks=[_Scripted(values), saver], verbose=0)
    assert len(history.epoch) == stop
    assert saver.state["stopped"] == (stop < EPOCHS)
    assert saver.state["best"] == pytest.approx(max(values[:stop]))


def _scripted_validation(monkeypatch, values):
    """Replaces validation metrics with ``values`` in order; returns the list of validation calls made."""
    calls, real, scripted = [], evaluate.evaluate_embeddings, iter(values)

    def fake(q, items, data, split, ks, exclude_seen=False):
        if split == "validation":
            calls.append(split)
            value = next(scripted)
            return {f"{m}@{k}": value for k in ks for m in ("recall", "ndcg")}
        return real(q, items, data, split, ks, exclude_seen)

    monkeypatch.setattr(evaluate, "evaluate_embeddings", fake)
    return calls


@pytest.mark.parametrize("values,patience,stop", CASES)
def test_id_sequence_stops_at_the_same_epoch(values, patience, stop, tmp_path, monkeypatch):
    cfg = history_cfg(tmp_path, n_users=6, per_user=6, depth=3,
                      **{"train.epochs": EPOCHS, "train.batch_size": 4, "train.early_stopping_patience": patience})
    calls = _scripted_validation(monkeypatch, values)
    baselines.id_sequence_embeddings(cfg, dataset.load(cfg.data), "test")
    assert len(calls) == stop


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    cfg = config_lib.build("smoke", None, [])
    return dataset.load(cfg.data, base_dir=str(tmp_path_factory.mktemp("smoke")))


@pytest.mark.parametrize("values,patience,stop", CASES)
def test_id_two_tower_stops_at_the_same_epoch(values, patience, stop, smoke_data, monkeypatch):
    calls = _scripted_validation(monkeypatch, values)
    baseline_runs.id_two_tower_baseline(smoke_data, "test", [10], epochs=EPOCHS, batch_size=64, patience=patience)
    assert len(calls) == stop
