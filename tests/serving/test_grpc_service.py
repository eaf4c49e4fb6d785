"""The gRPC front end: malformed PredictRequests and declared shapes."""

from __future__ import annotations


import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2

from tests.helpers.servers import MAX_BATCH, MAX_BYTES, predict_request, running_server


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=0.2,
                        max_batch_size=MAX_BATCH, max_request_bytes=MAX_BYTES) as s:
        yield s


def test_malformed_grpc_requests(server, stub):
    code = grpc.StatusCode

    def fails(request, want):
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, timeout=10)
        assert e.value.code() == want, e.value.details()

    fails(predict_request(["a"], name="nope"), code.NOT_FOUND)
    versioned = predict_request(["a"])
    versioned.model_spec.version.value = 9
    fails(versioned, code.NOT_FOUND)
    fails(predict_request(["a"], name="../etc"), code.INVALID_ARGUMENT)
    fails(predict_request(["a"], signature="nope"), code.INVALID_ARGUMENT)
    wrong_dtype = predict_pb2.PredictRequest()
    wrong_dtype.model_spec.name = "tiny"
    wrong_dtype.inputs["query_text"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    fails(wrong_dtype, code.INVALID_ARGUMENT)
    fails(predict_request(["a"], foo=[1]), code.INVALID_ARGUMENT)
    fails(predict_request([["a"]]), code.INVALID_ARGUMENT)
    fails(predict_request(["a"] * (MAX_BATCH + 1)), code.INVALID_ARGUMENT)
    fails(predict_request(["a", "b"], [["x"]]), code.INVALID_ARGUMENT)
    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = "tiny"
    missing.inputs["exclude_item_ids"].CopyFrom(tf.make_tensor_proto([["x"]]))
    fails(missing, code.INVALID_ARGUMENT)
    fails(predict_request(["x" * MAX_BYTES]), code.RESOURCE_EXHAUSTED)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(), timeout=10)
    assert e.value.code() == code.INVALID_ARGUMENT
    assert stub.Predict(predict_request(["still up"]), timeout=10).outputs["item_ids"]
