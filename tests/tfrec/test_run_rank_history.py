"""fit with a history query and a ranking head that reads the history's labels: eval.json's ranking section,
and an export whose rank / retrieve_and_rank take the history (and its labels) as serving_default does."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec.data import dataset


def test_fit_and_export_rank_with_history(tmp_path):
    config = tfrec.load_config(preset="smoke", overrides=[
        "data.interactions.query_column=null", "data.interactions.query_history_items=3",
        "model.history_encoder=attention", "model.query_encoder.trainable_layers=0", "ranking.weight=1.0",
        "ranking.extra_features=[rated_history]", "train.epochs=1", "eval.baselines=[popularity]",
        "export.index=brute_force"])
    run = tfrec.fit(config, tmp_path / "job")
    report = json.loads((tmp_path / "job" / "eval.json").read_text())
    ranking = report["ranking"]
    assert run.model.ranking_head.rated_history is not None and run.model.query_tower.encoder is None

    # The report's errors against the exported rank signature's scores of the same test pairs, and the global
    # mean's against the training labels' mean, both worked out here with numpy.
    loaded = tfrec.load_export(str(run.export_dir))
    rank, both = loaded.signatures["rank"], loaded.signatures["retrieve_and_rank"]
    data = dataset.load(run.config.data, base_dir=str(tmp_path / "job"))
    test, ids = data.test, np.array(data.catalog.item_ids)
    history = np.where(test.history >= 0, ids[np.maximum(test.history, 0)], "")
    served = rank(item_ids=tf.constant(np.array(test.item_id)[:, None]), history_item_ids=tf.constant(history),
                  history_labels=tf.constant(test.history_label))["scores"].numpy()[:, 0]
    errors = served - test.label
    assert ranking["pairs"] == len(test) == 60
    assert ranking["model"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)), rel=1e-4)
    assert ranking["model"]["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-4)
    mean_errors = np.mean(data.train.label) - test.label
    assert ranking["baselines"]["global_mean"]["rmse"] == pytest.approx(np.sqrt(np.mean(mean_errors ** 2)))

    assert set(rank.structured_input_signature[1]) == {"item_ids", "history_item_ids", "history_labels"}
    assert set(both.structured_input_signature[1]) == {"history_item_ids", "history_labels", "exclude_item_ids"}
    catalog = run.model.item_tower.item_ids
    history = tf.constant([[catalog[3], catalog[1], ""]])
    none = tf.zeros([1, 0], tf.string)
    out = both(history_item_ids=history, history_labels=tf.constant([[5.0, 1.0, 0.0]]), exclude_item_ids=none)
    again = rank(item_ids=out["item_ids"], history_item_ids=history, history_labels=tf.constant([[5.0, 1.0, 0.0]]))
    np.testing.assert_allclose(again["scores"].numpy(), out["ranking_scores"].numpy(), rtol=1e-5, atol=1e-6)
    unknown = rank(item_ids=out["item_ids"], history_item_ids=history,
                   history_labels=tf.fill([1, 3], float("nan")))["scores"].numpy()
    assert np.abs(unknown - again["scores"].numpy()).max() > 1e-6  # the labels reach the served score
