"""The baseline guard through a run: what it serves, eval.json reports, the export and load_trained serve."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec import baseline_guard, hybrid
from tfrec.trained import load_trained

FIGURES = ("recall@1", "recall@10", "ndcg@10", "mrr")


def test_towers_wrecked_in_training_serve_bm25_exactly(tmp_path):
    # A learning rate of 1e6 leaves the towers no better than chance: no fusion beats BM25 beyond noise on
    # validation, so the export serves lexical weight 1 and test is the bm25 baseline's to the digit.
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.query_encoder.trainable_layers=0", "train.epochs=1", "train.max_steps_per_epoch=3",
        "train.learning_rate=1e6", "eval.baselines=[bm25]", "export.enabled=false"])
    run = tfrec.fit(cfg, tmp_path / "job")
    section = run.metrics["hybrid"]
    assert (section["baseline"], section["fusion"], section["weight"]) == ("bm25", hybrid.FUSIONS[0], 1.0)
    assert "serving bm25" in section["reason"]
    for key in FIGURES[:3]:  # cut-offs up to export.k (mrr reads ranks past the served top k)
        assert run.metrics["model"][key] == run.metrics["baselines"]["bm25"][key]
    assert hybrid.served_choice(tmp_path / "job") == (hybrid.FUSIONS[0], 1.0)
    # set in the config, the same baseline is served without a validation pass
    assert hybrid.configured(tfrec.load_config(preset="smoke", overrides=["retrieval.hybrid_baseline=bm25"]))[:2] == (
        (hybrid.FUSIONS[0], 1.0), "bm25")


def test_a_run_serving_content_closes_the_gates_in_the_model_the_export_and_load_trained(tmp_path, monkeypatch):
    # The rule itself is tests/tfrec/test_baseline_guard.py's; here it says content, and the run must serve the
    # untrained start: width 32 = the random encoder's, frozen, so the start is the content baseline exactly.
    monkeypatch.setattr(baseline_guard, "keep_or_baseline", lambda metric, candidate, baselines: (
        "content" if "content" in baselines else None, "serving content (as this test says)"))
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.text_skip=on", "model.query_encoder.trainable_layers=0", "model.embedding_dim=32", "train.epochs=1",
        "train.max_steps_per_epoch=5", "eval.baselines=[content]"])
    run = tfrec.fit(cfg, tmp_path / "job")
    assert run.metrics["hybrid"]["baseline"] == "content" and run.metrics["hybrid"]["weight"] is None
    for key in FIGURES:
        assert run.metrics["model"][key] == pytest.approx(run.metrics["baselines"]["content"][key], abs=1e-6)
    assert run.model.query_tower.skip.gate.numpy() == run.model.item_tower.skip.gate.numpy() == 0.0
    _, reloaded, data = load_trained(tmp_path / "job")
    assert reloaded.item_tower.skip.gate.numpy() == 0.0 and hybrid.serves_start(tmp_path / "job")
    kept = tfrec.load_config(tmp_path / "job" / "params.yaml")  # a rerun serves the start, unchosen
    assert kept.retrieval.hybrid_baseline == "content" and hybrid.configured(kept)[1] == "content"

    texts = ["looking for ghost", "rocket"]
    encoder = run.model.query_tower.encoder
    q, i = encoder.encode_texts(texts), encoder.encode_texts(data.catalog.texts)
    cosine = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (i / np.linalg.norm(i, axis=1, keepdims=True)).T
    served = tfrec.load_export(run.export_dir).signatures["serving_default"](
        query_text=tf.constant(texts), exclude_item_ids=tf.constant([[""], [""]]))
    for row, got in zip(cosine, served["item_ids"].numpy().astype(str)):
        assert got.tolist() == [data.catalog.item_ids[j] for j in np.argsort(-row, kind="stable")[:10]]
