"""serving.limits end to end: oversized and malformed requests are refused fast, and nobody else waits."""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.server import ModelServer
from tests.helpers.servers import http, metric, predict_request, running_server

MAX_EXCLUSIONS = 1000


@pytest.fixture(scope="module")
def server(tiny_export):
    # The production default of --max_request_bytes (4 MiB), so that 1.3M ids fit in a body.
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=0.5, max_batch_size=64,
                        max_exclusions=MAX_EXCLUSIONS) as s:
        yield s


def string_proto(dims: list[int], values: list[bytes]) -> tensor_pb2.TensorProto:
    """A DT_STRING TensorProto that declares ``dims`` but carries only ``values``."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=values,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                            for d in dims]))


def test_hostile_requests_are_refused_fast_while_normal_requests_answer(server, stub):
    stop, latencies, failures = threading.Event(), [], []

    def normal_client():
        while not stop.is_set():
            start = time.monotonic()
            status, body = http(server.rest_port, "/v1/models/tiny:predict",
                                {"instances": [{"query_text": "space opera", "exclude_item_ids": ["item_01"]}]})
            latencies.append(time.monotonic() - start)
            if status != 200:
                failures.append(body)

    clients = [threading.Thread(target=normal_client) for _ in range(2)]
    for c in clients:
        c.start()
    time.sleep(0.3)  # normal requests are in flight from here on
    # REST: 1.3M (empty) exclusion ids in one instance, a 3.9 MB body under the 4 MiB body limit.
    ids = b'"",' * 1_299_999 + b'""'
    body = b'{"instances": [{"query_text": "a", "exclude_item_ids": [' + ids + b"]}]}"
    start = time.monotonic()
    status, answer = http(server.rest_port, "/v1/models/tiny:predict", raw=body)
    rest_s = time.monotonic() - start
    # gRPC: 85 bytes declaring [1, 2**21] ids with a single value (which make_ndarray would fill).
    request = predict_request(["a"])
    request.inputs["exclude_item_ids"].CopyFrom(string_proto([1, 1 << 21], [b"item_01"]))
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=30)
    grpc_s = time.monotonic() - start
    time.sleep(0.3)
    stop.set()
    for c in clients:
        c.join(10)
    assert status == 400 and "--max_exclusions" in answer["error"] and str(MAX_EXCLUSIONS) in answer["error"]
    assert rest_s < 2.0, rest_s
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_exclusions" in e.value.details()
    assert grpc_s < 2.0, grpc_s
    assert not failures and len(latencies) > 10
    assert max(latencies) < 1.0, sorted(latencies)[-5:]


def test_limits_name_the_flag_and_allow_the_maximum(server, stub):
    at_limit = [f"item_{i}" for i in range(MAX_EXCLUSIONS)]
    ok = {"instances": [{"query_text": "a", "exclude_item_ids": at_limit}]}
    assert http(server.rest_port, "/v1/models/tiny:predict", ok)[0] == 200
    over = {"inputs": {"query_text": ["a"], "exclude_item_ids": [at_limit + ["x"]]}}
    status, answer = http(server.rest_port, "/v1/models/tiny:predict", over)
    assert status == 400 and "--max_exclusions is 1000" in answer["error"]
    status, answer = http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["q"] * 65})
    assert status == 400 and "--max_batch_size" in answer["error"]
    assert stub.Predict(predict_request(["a"], [at_limit]), timeout=10).outputs["item_ids"]
    request = predict_request(["a"] * 65)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_batch_size" in e.value.details()


@pytest.mark.parametrize("dims,values,message", [
    ([2], [b"a", b"b", b"c"], "declares shape [2] (2 values) but 3 values were sent"),
    ([3], [b"a", b"b"], "declares shape [3] (3 values) but 2 values were sent"),
    ([-1], [b"a"], "negative dimension"),
    ([1, 1], [b"a"], "declares shape [1, 1], expected [?]"),
    ([1], [b"\xff\xfe"], "not valid UTF-8"),
])
def test_declared_shape_must_match_the_values_sent(stub, dims, values, message):
    request = predict_request(["a"])
    request.inputs["query_text"].CopyFrom(string_proto(dims, values))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()


def test_encoding_errors_are_400_without_a_traceback(server, caplog):
    cases = [
        (b'{"instances": [{"query_text": "\\ud800"}]}', "not valid UTF-8 text"),  # a lone surrogate
        (b'{"instances": [{"query_text": "ok", "exclude_item_ids": ["a\\udfff"]}]}', "not valid UTF-8 text"),
        (b'{"instances": [{"query_text": "\xff\xfe"}]}', "JSON Parse error"),  # invalid UTF-8 bytes
        (b'{"signature_name": "scaled_embed_query", "inputs": {"query_text": ["a"], "scale": NaN}}', "NaN"),
        (b'{"signature_name": "scaled_embed_query", "inputs": {"query_text": ["a"], "scale": -Infinity}}',
         "Infinity"),
        (b'{"signature_name": "scaled_embed_query", "inputs": {"query_text": ["a"], "scale": 1e999}}',
         "NaN or infinite"),
    ]
    with caplog.at_level(logging.DEBUG):
        for body, reason in cases:
            status, answer = http(server.rest_port, "/v1/models/tiny:predict", raw=body)
            assert status == 400 and reason in answer["error"], (body, answer)
            assert "\n" not in answer["error"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    text = http(server.rest_port, "/monitoring/prometheus/metrics")[1]
    assert metric(text, "tfrec_serving_requests_total", model="tiny", signature="serving_default", api="rest",
                  status="INTERNAL") is None


def test_a_server_fault_is_500_logged_once_with_the_request_id(tiny_export, caplog):
    with running_server({"tiny": str(tiny_export / "tiny")}, grpc_port=None) as s:
        def broken(**_):
            raise RuntimeError("disk on fire")
        s.registry.models["tiny"].signatures["embed_query"].fn = broken
        with caplog.at_level(logging.INFO, logger="serving.server"):
            status, answer = http(s.rest_port, "/v1/models/tiny:predict",
                                  {"signature_name": "embed_query", "instances": ["a"]})
    assert status == 500 and "disk on fire" in answer["error"]
    request_id = answer["error"].split("request id ")[1].split(")")[0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and request_id in errors[0].getMessage() and errors[0].exc_info


def test_rest_timeout_frees_a_request_waiting_behind_a_slow_one(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, grpc_port=None, max_batch_size=1,
                        rest_timeout_s=0.3, num_batch_threads=1) as s:
        sig = s.registry.models["tiny"].signatures["serving_default"]
        fast = sig.fn
        sig.fn = lambda **kw: (time.sleep(1.0), fast(**kw))[1]
        results = {}

        def call(i):
            start = time.monotonic()
            status = http(s.rest_port, "/v1/models/tiny:predict", {"instances": [f"q{i}"]})[0]
            results[i] = (status, time.monotonic() - start)

        first = threading.Thread(target=call, args=(0,))
        first.start()
        time.sleep(0.2)  # the first one runs (1 s); the second waits behind it (max_batch_size 1)
        call(1)
        first.join(10)
    assert results[0][0] == 200
    assert results[1][0] == 504 and results[1][1] < 0.9, results


def test_limits_are_flags(tiny_export):
    from serving.server import parse_flags

    args = parse_flags(["--model_base_path", "x", "--max_exclusions", "50", "--enable_batching=false",
                        "--rest_api_timeout_in_ms", "250", "--enable_model_warmup=true", "--rest_api_num_threads=8"])
    assert (args.max_exclusions, args.enable_batching, args.rest_api_timeout_in_ms) == (50, False, 250)
    assert args.enable_model_warmup == "true" and parse_flags(["--model_base_path", "x"]).max_exclusions == 1000
    with pytest.raises(SystemExit):
        parse_flags(["--model_base_path", "x", "--ssl_config_file", "tls.conf"])
    server = ModelServer({"tiny": str(tiny_export / "tiny")}, max_exclusions=3, enable_batching=False)
    server.poll_once()
    assert server.limits.max_exclusions == 3 and not server.registry.models["tiny"].batchers
