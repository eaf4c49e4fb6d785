"""fit on history-built queries: id_sequence in the baselines, the cold_items section, a resumable job."""

import json

import tfrec


def test_fit_with_history_and_cold_items(tmp_path):
    config = tfrec.load_config(preset="smoke", overrides=[
        "data.interactions.query_column=null", "data.interactions.query_history_items=3",
        "model.query_encoder.trainable_layers=0", "retrieval.negatives=full", "eval.cold_items_fraction=0.1",
        "train.epochs=1", "export.enabled=false"])
    run = tfrec.fit(config, tmp_path / "job")
    report = json.loads((tmp_path / "job" / "eval.json").read_text())
    assert report == run.metrics
    assert set(report["baselines"]) == {"popularity", "content", "id_sequence", "id_two_tower"}  # eval.baselines default
    assert set(report["baselines"]["id_sequence"]) == set(report["model"])
    cold = report["cold_items"]
    assert cold["items"] == 16 and report["data"]["counts"]["cold_items"] == 16  # 10% of 160 items
    assert 0 < cold["targets"] <= report["data"]["counts"]["test"]
    assert set(cold["baselines"]) == {"popularity", "content"} and set(cold["model"]) == set(report["model"])
    assert run.model.query_tower.encoder is None  # history only: no BERT on the query side
