"""Hybrid search through the stages: validation picks the weight, eval.json reports it, the export serves it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text
import yaml
from tensorflow.python.framework import op_def_registry
from tensorflow_serving.apis import prediction_service_pb2_grpc

import tfrec
from tfrec import config as config_lib, evaluate, hybrid
from tfrec.index.hybrid import FUSIONS
from tfrec import index as index_lib
from tfrec.export.savedmodel import export_run
from tests.helpers.servers import http, predict_request, running_server
from tests.tfrec.index.test_hybrid import op_names
from tfrec import run as stages

embed = stages.embed_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tfrec.load_config(preset="smoke", overrides=[
        "model.query_encoder.trainable_layers=0", "train.epochs=1", "train.max_steps_per_epoch=3",
        "eval.baselines=false", "retrieval.hybrid=on"])
    job = tmp_path_factory.mktemp("hybrid")
    data = stages.load_data(cfg, job)
    model = stages.build_model(cfg, data)
    features = stages.build_features(cfg, data, model)
    state = stages.train(cfg, model, data, features, tf.distribute.get_strategy(), job / "checkpoints",
                         job / "tensorboard")
    return cfg, job, data, model, features, state


def test_eval_json_reports_the_fused_model_beside_dense_and_lexical(trained):
    cfg, job, data, model, features, state = trained
    evaluation = stages.evaluate_model(cfg, model, data, features)
    report = stages.write_report(cfg, job, data, evaluation, state, 1.0)
    weight, fusion = report["hybrid"]["weight"], report["hybrid"]["fusion"]
    assert 0 < weight <= 1 and report["hybrid"]["setting"] == "on"  # on: a weight above 0 whatever validation says
    assert set(report["hybrid"]["validation"]) == set(FUSIONS)
    assert all(set(by_weight) == {str(w) for w in hybrid.WEIGHTS} for by_weight in report["hybrid"]["validation"].values())
    dense = evaluate.evaluate_embeddings(evaluation.query_embeddings, evaluation.item_embeddings, data, "test",
                                         cfg.eval.ks)
    assert report["model_variants"]["dense"] == dense
    assert json.loads((job / "eval.json").read_text())["hybrid"]["weight"] == weight
    assert hybrid.served_choice(job) == (fusion, weight)

    (published,) = stages.export_model(cfg, job, model, data, evaluation)
    served = tfrec.load_export(published)
    texts = data.test.query_text[:4]
    out = served.signatures["serving_default"](query_text=tf.constant(texts),
                                               exclude_item_ids=tf.zeros([4, 0], tf.string))
    want = hybrid.exact_hybrid(evaluation.item_embeddings, data, cfg.export.k, weight, fusion=fusion).search_hybrid(
        tf.constant(evaluation.query_embeddings[:4]), tf.constant(texts))
    np.testing.assert_array_equal(out["item_ids"].numpy(), want[1].numpy())
    np.testing.assert_allclose(out["scores"].numpy(), want[0].numpy(), rtol=1e-4, atol=1e-5)
    info = json.loads((published / "assets.extra" / "export_report.json").read_text())["index"]
    assert info["params"]["hybrid"] == {"fusion": fusion, "lexical_weight": weight, "lexical_candidates": cfg.export.k}
    # What stock TF Serving runs: TensorFlow's own ops and tensorflow-text's (the tokenizer), nothing else.
    text_ops = {n for so in (Path(tensorflow_text.__file__).parent / "python" / "ops").glob("_*.so")
                for n in dir(tf.load_op_library(str(so))) if op_def_registry.get(n) is not None}
    names = op_names(published)
    assert {n for n in names if not hasattr(tf.raw_ops, n)} <= text_ops
    assert {"FastWordpieceTokenizeWithOffsets", "SegmentSum", "LookupTableFindV2"} <= names  # text and BM25 in
    # The local server, over REST and gRPC, returns the SavedModel's own fused top k.
    with running_server({"smoke": str(published.parent)}, poll_wait_s=0.2) as server:
        status, answer = http(server.rest_port, "/v1/models/smoke:predict", {"instances": texts}, method="POST")
        assert status == 200, answer
        assert [p["item_ids"] for p in answer["predictions"]] == out["item_ids"].numpy().astype(str).tolist()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        reply = stub.Predict(predict_request(texts, name="smoke"), timeout=60)
        np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["item_ids"]), out["item_ids"].numpy())


@pytest.mark.parametrize("kind", ["ivf", "scann"])
def test_approximate_index_serves_and_gates_the_fused_top_k(trained, monkeypatch, kind):
    cfg, job, data, model, features, state = trained
    monkeypatch.setattr(index_lib, "APPROXIMATE_MIN_ITEMS", 16)  # the smoke catalog has 160 items (ScaNN: >= 16)
    evaluation = stages.evaluate_model(cfg, model, data, features)
    stages.write_report(cfg, job, data, evaluation, state, 1.0)
    (path,) = export_run(cfg, job, model, data, evaluation.item_embeddings, index=kind,
                         query_embeddings=evaluation.query_embeddings)
    info = json.loads((path / "assets.extra" / "export_report.json").read_text())["index"]
    fusion, weight = hybrid.served_choice(job)
    assert info["kind"] == kind and info["params"]["hybrid"]["lexical_weight"] == weight
    assert info["params"]["hybrid"]["fusion"] == fusion
    # The gate compares fused top-k lists; searching everything would give 1.0, less can only lose.
    assert cfg.export.min_recall <= info["recall"]["recall@10"] <= 1.0
    texts = data.test.query_text[:3]
    out = tfrec.load_export(path).signatures["serving_default"](query_text=tf.constant(texts),
                                                                exclude_item_ids=tf.zeros([3, 0], tf.string))
    scores = out["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if fusion == "minmax_weighted_sum":
        assert ((scores >= 0) & (scores <= 1)).all()  # fused, not dot products
    else:
        assert ((scores >= 0) & (scores <= 1 / 61 + 1e-7)).all()  # reciprocal ranks: (1 - w) / 61 + w / 61 at best


def test_configured_fusion_and_weight_skip_the_choice(trained, monkeypatch):
    cfg, job, data, model, features, state = trained
    embedded = []
    monkeypatch.setattr(stages, "embed_split", lambda m, d, f, split: embedded.append(split) or embed(m, d, f, split))
    cfg = config_lib.updated(cfg, {"retrieval.hybrid_fusion": "reciprocal_rank", "retrieval.hybrid_weight": 0.7})
    evaluation = stages.evaluate_model(cfg, model, data, features)
    section = evaluation.extra["hybrid"]
    assert (section["fusion"], section["weight"], section["validation"]) == ("reciprocal_rank", 0.7, {})
    assert "as the config sets (not chosen on validation)" in section["reason"] and embedded == ["test"]
    want = hybrid.metrics_by_choice((evaluation.query_embeddings, evaluation.item_embeddings), data, "test", cfg,
                                    [0.7], fusions=["reciprocal_rank"])
    assert evaluation.model == want["reciprocal_rank", 0.7]
    # Weight 0: the towers alone are served, still without a validation pass.
    cfg = config_lib.updated(cfg, {"retrieval.hybrid": "auto", "retrieval.hybrid_weight": 0.0})
    evaluation = stages.evaluate_model(cfg, model, data, features)
    assert evaluation.extra["hybrid"]["weight"] is None and embedded == ["test", "test"]
    assert evaluation.model == evaluation.extra["model_variants"]["dense"]


def test_params_yaml_keeps_the_choice_and_repeats_it(trained, tmp_path):
    cfg, job, data, model, features, state = trained
    first = stages.evaluate_model(cfg, model, data, features)
    chosen = first.extra["hybrid"]
    kept = hybrid.keep_choice(cfg, tmp_path, first.extra)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())["retrieval"]
    assert (params["hybrid_fusion"], params["hybrid_weight"]) == (chosen["fusion"], chosen["weight"])
    again = config_lib.build(config_file=str(tmp_path / "params.yaml"))
    assert again.retrieval == kept.retrieval and config_lib.config_hash(again) == config_lib.config_hash(kept)
    second = stages.evaluate_model(again, model, data, features)
    assert second.model == first.model and second.extra["hybrid"]["validation"] == {}
    assert (second.extra["hybrid"]["fusion"], second.extra["hybrid"]["weight"]) == (chosen["fusion"], chosen["weight"])
