"""fit with a history query and a ranking head that reads the history's labels: eval.json's ranking section,
and an export whose rank / retrieve_and_rank take the history (and its labels) as serving_default does."""

import json

import numpy as np
import tensorflow as tf

import tfrec


def test_fit_and_export_rank_with_history(tmp_path):
    config = tfrec.load_config(preset="smoke", overrides=[
        "data.interactions.query_column=null", "data.interactions.query_history_items=3",
        "model.history_encoder=attention", "model.query_encoder.trainable_layers=0", "ranking.weight=1.0",
        "ranking.extra_features=[rated_history]", "train.epochs=1", "eval.baselines=[popularity]",
        "export.index=brute_force"])
    run = tfrec.fit(config, tmp_path / "job")
    report = json.loads((tmp_path / "job" / "eval.json").read_text())
    ranking = report["ranking"]
    assert set(ranking["model"]) == {"rmse", "mae"} and np.isfinite(ranking["model"]["rmse"])
    assert run.model.ranking_head.rated_history is not None and run.model.query_tower.encoder is None

    loaded = tfrec.load_export(str(run.export_dir))
    rank, both = loaded.signatures["rank"], loaded.signatures["retrieve_and_rank"]
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
