import dataclasses

import pytest

from tfrec import baseline_runs, evaluate
from tfrec import config as config_lib
from tfrec.data import dataset
from tfrec.job_cache import JobCache
from tfrec.timings import StageTimes
from tests.tfrec.data.test_dataset import make_cfg, rows


SETS = ["train.batch_size=64", "train.epochs=3", "train.early_stopping_patience=1", "eval.validation_max_queries=20",
        "eval.baselines=[popularity, id_two_tower]"]


@pytest.fixture
def smoke(tmp_path):
    cfg = config_lib.build("smoke", None, SETS)
    return cfg, dataset.load(cfg.data, base_dir=str(tmp_path))


def test_baselines_get_the_models_budget_a_seeded_validation_sample_and_are_reused(smoke, tmp_path, monkeypatch,
                                                                                     caplog):
    cfg, data = smoke
    seen = []

    def fake(cfg_, data_, split, budget):
        seen.append((len(data_.validation), split, budget))
        return {"recall@10": 0.25}

    monkeypatch.setitem(baseline_runs.BASELINES, "id_two_tower", baseline_runs.Baseline(fake, needs_users=True))
    times = StageTimes()
    with caplog.at_level("INFO", logger="tfrec"):
        out = baseline_runs.run_baselines(cfg, data, "test", times, JobCache(tmp_path))
    assert out["id_two_tower"] == {"recall@10": 0.25}
    assert set(out["popularity"]) == {"recall@1", "recall@5", "recall@10", "ndcg@1", "ndcg@5", "ndcg@10", "mrr"}
    n_val, split, budget = seen[0]
    assert (n_val, split) == (20, "test")  # 60 validation queries, cut to the seeded 20
    assert (budget.batch_size, budget.epochs, budget.patience, budget.seed) == (64, 3, 1, cfg.train.seed)
    assert set(times.stages) == {"baseline:popularity", "baseline:id_two_tower"}

    # A rerun of the same config reuses both; a changed budget trains again.
    caplog.clear()
    with caplog.at_level("INFO", logger="tfrec"):
        assert baseline_runs.run_baselines(cfg, data, "test", None, JobCache(tmp_path)) == out
    assert len(seen) == 1 and caplog.text.count("reused from the job dir's cache") == 2
    cfg = config_lib.build("smoke", None, [*SETS, "train.epochs=4"])
    baseline_runs.run_baselines(cfg, data, "test", None, JobCache(tmp_path))
    assert len(seen) == 2

    # Skipped by name; one that cannot run on this data says why.
    cfg = config_lib.build("smoke", None, [*SETS, "eval.baselines=[id_two_tower]"])
    no_users = dataclasses.replace(cfg.data.interactions, user_id_column=None)  # (leave_last itself needs them)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, interactions=no_users))
    with caplog.at_level("INFO", logger="tfrec"):
        assert baseline_runs.run_baselines(cfg, data, "test") == {}
    assert "no id_two_tower baseline (it needs data.interactions.user_id_column)" in caplog.text


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_popularity_by_hand(tmp_path, exclude_seen):
    # rows(): u0 sees i1 i2 i3 i4, u1 i2 i3 i4 i1, u2 i3 i4 i1 i2; the last goes to test, the one before to
    # validation. Training counts: i1 1, i2 2, i3 2, i4 1; equal counts in catalog order: i2 > i3 > i1 > i4.
    # Test targets u0 i4, u1 i1, u2 i2: ranks 4, 3, 1.
    # Leaving out what each user saw before the test query (training and validation: u0 i1 i2 i3, u1 i2 i3 i4,
    # u2 i3 i4 i1) leaves each target alone: ranks 1, 1, 1 (training items alone would give ranks 2, 1, 1).
    cfg = config_lib.updated(make_cfg(tmp_path, rows()), {
        "eval.baselines": ["popularity"], "eval.ks": [1, 3], "eval.exclude_seen": exclude_seen})
    data = dataset.load(cfg.data)
    got = baseline_runs.run_baselines(cfg, data, "test")["popularity"]
    if exclude_seen:
        want = {"recall@1": 1.0, "recall@3": 1.0, "ndcg@1": 1.0, "ndcg@3": 1.0, "mrr": 1.0}
    else:
        want = {"recall@1": 1 / 3, "recall@3": 2 / 3, "ndcg@1": 1 / 3, "ndcg@3": (1 / 2 + 1) / 3,
                "mrr": (1 / 4 + 1 / 3 + 1) / 3}
    assert got == pytest.approx(want)


def test_id_two_tower_stops_after_patience_epochs_without_improvement(smoke, monkeypatch):
    cfg, data = smoke
    values = iter([0.5, 0.4, 0.3, 0.9, 0.9])  # best at epoch 1, then worse: patience 1 stops after epoch 2
    real = evaluate.evaluate_embeddings
    calls = []

    def scripted(q, items, data_, split, ks, exclude_seen=False):
        if split == "validation":
            calls.append(1)
            return {"recall@10": next(values)}
        return real(q, items, data_, split, ks, exclude_seen)

    monkeypatch.setattr(evaluate, "evaluate_embeddings", scripted)
    out = baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=5, batch_size=64, patience=1)
    assert len(calls) == 2 and 0.0 <= out["recall@10"] <= 1.0
    calls.clear()
    values = iter([0.5, 0.4, 0.3, 0.9, 0.9])
    baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=5, batch_size=64, patience=None)
    assert len(calls) == 5
    calls.clear()
    baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=1, batch_size=64)
    assert calls == []  # one epoch: nothing to choose, no validation pass


def test_id_two_tower_numbers_ids_as_string_lookup_and_groups_steps_without_changing_the_result(smoke, monkeypatch):
    import numpy as np
    import tensorflow as tf

    vocabulary = ["u3", "u1", "u7"]
    ids = np.array(["u1", "u9", "u7", "u3", "u1"], object)
    want = tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None)(tf.constant(ids.astype(str)))
    rows = baseline_runs._RowLookup(vocabulary)
    assert rows(ids).numpy().tolist() == want.numpy().tolist() == [2, 0, 3, 1, 2] and rows.size == 4

    cfg, data = smoke  # the same 2 epochs, run 64 steps per compiled call or one (mrr tells any change apart)
    grouped = baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=2, batch_size=64, patience=None)
    monkeypatch.setattr(baseline_runs, "STEPS_PER_EXECUTION", 1)
    assert baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=2, batch_size=64, patience=None) == grouped


def test_id_two_tower_batches_are_reshuffled_every_epoch_and_seeded():
    import numpy as np

    def epochs(times):
        rng = np.random.default_rng(0)
        return [[b.numpy().tolist() for b in baseline_runs._epoch_rows(50, 8, rng)] for _ in range(times)]

    first, second, third = epochs(3)
    for batches in (first, second, third):
        assert [len(b) for b in batches] == [8] * 6 + [2]
        assert sorted(sum(batches, [])) == list(range(50))  # every row once per epoch
    assert first != second and second != third and first != third  # a new order every epoch
    assert epochs(3) == [first, second, third]  # a rerun sees the same order in each epoch


def test_id_two_tower_fit_sees_a_new_order_every_epoch_and_traces_once(smoke, monkeypatch):
    import tensorflow as tf

    cfg, data = smoke
    epochs, traces, real = [], [], baseline_runs._epoch_rows

    def record(rows):
        epochs[-1].extend(rows.numpy().tolist())
        return rows

    def recorded(n, batch_size, rng):
        return real(n, batch_size, rng).map(lambda rows: tf.ensure_shape(tf.py_function(record, [rows], tf.int64),
                                                                         [None]))

    fit = tf.keras.Model.fit

    def counted_fit(self, *args, **kwargs):
        epochs.append([])
        history = fit(self, *args, **kwargs)
        traces.append(self.train_function.experimental_get_tracing_count())
        return history

    monkeypatch.setattr(baseline_runs, "_epoch_rows", recorded)
    monkeypatch.setattr(tf.keras.Model, "fit", counted_fit)
    baseline_runs.id_two_tower_baseline(data, "test", [10], epochs=3, batch_size=64, patience=None)
    assert len(epochs) == 3
    assert all(sorted(rows) == list(range(len(data.train))) for rows in epochs)  # each fit call: every row once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert traces[1:] == traces[:-1]  # a new dataset every epoch, the train step traced in the first one only


def test_baseline_names_from_the_config_value():
    from tfrec.errors import ConfigError

    assert baseline_runs.baseline_names(True) == list(baseline_runs.BASELINES)
    assert baseline_runs.baseline_names(False) == [] == baseline_runs.baseline_names([])
    assert baseline_runs.baseline_names(["id_two_tower", "popularity"]) == ["id_two_tower", "popularity"]
    with pytest.raises(ConfigError, match="unknown baseline 'pop'; expected some of popularity, bm25, content, id_sequence, id_two_tower"):
        baseline_runs.baseline_names(["pop"])


def test_config_takes_baselines_as_names_or_a_switch_and_a_validation_sample_size():
    from tfrec.errors import ConfigError

    assert config_lib.build("smoke", None, ["eval.baselines=false"]).eval.baselines is False
    assert config_lib.build("smoke", None, ["eval.baselines=[popularity]"]).eval.baselines == ["popularity"]
    default = config_lib.build("smoke", None, [])
    assert default.eval.baselines is True and default.eval.validation_max_queries == 10000
    assert config_lib.Config().eval.baselines is True  # the base: every baseline that applies to the data
    assert config_lib.build("smoke", None, ["eval.validation_max_queries=null"]).eval.validation_max_queries is None
    with pytest.raises(ConfigError, match="eval.baselines"):
        config_lib.build("smoke", None, ["eval.baselines=7"])
    with pytest.raises(ConfigError, match="eval.validation_max_queries"):
        config_lib.build("smoke", None, ["eval.validation_max_queries=0"])
