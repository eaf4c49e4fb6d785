"""A model whose query is text and/or the user's recent items, served over REST and gRPC.

Either query input may be left out of a request (the SignatureDef's defaults
stand in for it), and answers equal the SavedModel's own for the same inputs.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.helpers.servers import http, running_server
from tests.tfrec.export.test_savedmodel_history import module


def _publish(tmp_path, tiny_encoder):
    mod, _ = module(tiny_encoder, with_text=True)
    path = tmp_path / "hist" / "1"
    tf.saved_model.save(mod, str(path), signatures=mod.signatures())
    return mod, str(tmp_path / "hist")


def _grpc(port: int, **inputs) -> list[list[bytes]]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hist"
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return tf.make_ndarray(reply.outputs["item_ids"]).tolist()


def test_text_only_history_only_both_and_exclusions(tmp_path, tiny_encoder):
    mod, base = _publish(tmp_path, tiny_encoder)
    history = [["i3", "i1", ""]]

    def direct(**kwargs) -> list[str]:
        feed = {k: tf.constant(v) for k, v in kwargs.items()}
        return [i.decode() for i in mod.retrieve(**feed)["item_ids"].numpy()[0]]

    expected = {"text": direct(query_text=["rocket"]), "history": direct(history_item_ids=history),
                "both": direct(query_text=["rocket"], history_item_ids=history)}
    with running_server({"hist": base}, poll_wait_s=0.2) as server:
        rest = {}
        for name, inputs in (("text", {"query_text": ["rocket"]}), ("history", {"history_item_ids": history}),
                             ("both", {"query_text": ["rocket"], "history_item_ids": history})):
            status, body = http(server.rest_port, "/v1/models/hist:predict", {"inputs": inputs})
            assert status == 200, body
            rest[name] = body["outputs"]["item_ids"][0]
            assert [i.decode() for i in _grpc(server.grpc_port, **inputs)[0]] == rest[name]
        assert rest == expected
        top = rest["both"][0]
        status, body = http(server.rest_port, "/v1/models/hist:predict",
                             {"inputs": {"query_text": ["rocket"], "history_item_ids": history,
                                         "exclude_item_ids": [[top]]}})
        assert status == 200 and top not in body["outputs"]["item_ids"][0]
        excluded = _grpc(server.grpc_port, history_item_ids=np.array(history), exclude_item_ids=[[top]])
        assert top.encode() not in excluded[0]
