"""serving.server end to end: REST (urllib) and gRPC (the real TF Serving stub) on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import client as client_lib
from tfrec.export import layout
from serving.batching import Batcher, DeadlineExceeded
from tests.helpers.tiny_model import write_tiny_model

REPO = Path(__file__).resolve().parents[2]
MAX_BATCH, MAX_BYTES = 8, 64 << 10


@contextmanager
def running_server(base_paths: dict[str, str], **kwargs: Any) -> Iterator[Any]:
    """An in-process ModelServer on free 127.0.0.1 ports, stopped afterwards."""
    from serving.server import ModelServer

    server = ModelServer(base_paths, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=5)


def http(port: int, path: str, body: Any = None, method: str | None = None,
         raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one plain-urllib request to 127.0.0.1:port."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=0.2,
                        max_batch_size=MAX_BATCH, max_request_bytes=MAX_BYTES) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def direct(tiny_export):
    """The served SavedModel's signatures, called in-process (the reference answers)."""
    return tf.saved_model.load(str(tiny_export / "tiny" / "1")).signatures


def direct_retrieve(direct, queries, exclude=None):
    exclude = exclude or [[] for _ in queries]
    width = max(len(e) for e in exclude)
    padded = tf.constant([e + [""] * (width - len(e)) for e in exclude], tf.string,
                         shape=[len(queries), width])
    out = direct["serving_default"](query_text=tf.constant(queries), exclude_item_ids=padded)
    return [[i.decode() for i in row] for row in out["item_ids"].numpy()], out["scores"].numpy()


def predict_request(queries, exclude=None, name="tiny", signature="", **extra_inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["query_text"].CopyFrom(tf.make_tensor_proto(queries, dtype=tf.string))
    if exclude is not None:
        request.inputs["exclude_item_ids"].CopyFrom(tf.make_tensor_proto(exclude, dtype=tf.string))
    for n, v in extra_inputs.items():
        request.inputs[n].CopyFrom(tf.make_tensor_proto(v))
    return request


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus series ``name{labels}`` in exposition ``text`` (any label order)."""
    for m in re.finditer(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


# ------------------------------------------------------------------ predict
def test_rest_row_format_matches_direct_call(server, direct):
    status, body = http(server.rest_port, "/v1/models/tiny:predict",
                        {"instances": [{"query_text": "space opera"}, {"query_text": "romance"}]})
    assert status == 200
    ids, scores = direct_retrieve(direct, ["space opera", "romance"])
    assert [p["item_ids"] for p in body["predictions"]] == ids  # list of dicts, one per row
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]], scores, rtol=1e-5)
    # A bare value feeds the only required input; the optional exclusions are fed as [b, 0].
    status, bare = http(server.rest_port, "/v1/models/tiny:predict",
                        {"signature_name": "retrieve", "instances": ["space opera", "romance"]})
    assert status == 200 and [p["item_ids"] for p in bare["predictions"]] == ids


def test_rest_columnar_format_and_single_output_signatures(server, direct):
    status, body = http(server.rest_port, "/v1/models/tiny/versions/1:predict",
                        {"inputs": {"query_text": ["space opera"]}})
    assert status == 200
    assert set(body["outputs"]) == {"item_ids", "scores"}  # dict of lists
    assert body["outputs"]["item_ids"] == direct_retrieve(direct, ["space opera"])[0]
    # One output: its name is left out, in both forms.
    want = direct["embed_query"](query_text=tf.constant(["a", "b"]))["embedding"].numpy()
    for form, key in (("inputs", "outputs"), ("instances", "predictions")):
        status, body = http(server.rest_port, "/v1/models/tiny:predict",
                            {"signature_name": "embed_query", form: ["a", "b"]})
        assert status == 200 and list(body) == [key]
        np.testing.assert_allclose(body[key], want, rtol=1e-6)
    status, body = http(server.rest_port, "/v1/models/tiny:predict", {
        "signature_name": "embed_item", "instances": [{"item_id": "x", "item_text": "y"}]})
    assert status == 200 and np.asarray(body["predictions"]).shape == (1, 8)


def test_inputs_with_signature_defaults_may_be_omitted(server, direct):
    want = direct["embed_query"](query_text=tf.constant(["a"]))["embedding"].numpy()
    for inputs, factor in (({"query_text": ["a"]}, 1.0), ({"query_text": ["a"], "scale": 2.0}, 2.0)):
        status, body = http(server.rest_port, "/v1/models/tiny:predict",
                            {"signature_name": "scaled_embed_query", "inputs": inputs})
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"], want * factor, rtol=1e-6)
    status, body = http(server.rest_port, "/v1/models/tiny:predict",
                        {"signature_name": "scaled_embed_query", "inputs": {"scale": 2.0}})
    assert status == 400 and "query_text" in body["error"]


def test_exclusions_are_honoured_end_to_end(server, stub, direct):
    queries = ["space opera", "romance", "noir"]
    plain, _ = direct_retrieve(direct, queries)
    # Different widths per row (padded by the server), and one row without any.
    exclude = [plain[0][:2], [], plain[2][:1]]
    want, _ = direct_retrieve(direct, queries, exclude)
    for row, excluded in zip(want, exclude):
        assert not set(row) & set(excluded)
    assert want[1] == plain[1] and want[0][:3] == plain[0][2:5]

    instances = [{"query_text": q, "exclude_item_ids": e} for q, e in zip(queries, exclude)]
    del instances[1]["exclude_item_ids"]
    status, body = http(server.rest_port, "/v1/models/tiny:predict", {"instances": instances})
    assert status == 200 and [p["item_ids"] for p in body["predictions"]] == want

    padded = [e + [""] * (2 - len(e)) for e in exclude]
    status, body = http(server.rest_port, "/v1/models/tiny:predict",
                        {"inputs": {"query_text": queries, "exclude_item_ids": padded}})
    assert status == 200 and body["outputs"]["item_ids"] == want

    response = stub.Predict(predict_request(queries, padded), timeout=10)
    got = tf.make_ndarray(response.outputs["item_ids"]).astype(str).tolist()
    assert got == want
    assert response.model_spec.name == "tiny" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"

    for c in (client_lib.RestClient("127.0.0.1", server.rest_port, "tiny"),
              client_lib.GrpcClient("127.0.0.1", server.grpc_port, "tiny")):
        results = c.retrieve(queries, k=3, exclude=exclude)
        assert [[i for i, _ in r] for r in results] == [w[:3] for w in want]


def test_grpc_metadata_and_status(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    default = sigs.signature_def["serving_default"]
    assert set(default.inputs) == {"query_text", "exclude_item_ids"}
    assert set(default.outputs) == {"item_ids", "scores"}
    assert default.inputs["query_text"].dtype == tf.string.as_datatype_enum
    assert {"retrieve", "embed_query", "embed_item"} <= set(sigs.signature_def)

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "tiny"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    channel.close()


def test_rest_status_metadata_and_prometheus(server):
    want = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(server.rest_port, "/v1/models/tiny") == (200, want)
    assert http(server.rest_port, "/v1/models/tiny/versions/1") == (200, want)
    assert http(server.rest_port, "/v1/models/tiny/versions/2")[0] == 404
    assert http(server.rest_port, "/v1/models/nope")[0] == 404

    status, meta = http(server.rest_port, "/v1/models/tiny/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["query_text"]["dtype"] == "DT_STRING"
    assert sig["outputs"]["scores"]["dtype"] == "DT_FLOAT"
    assert sig["method_name"] == "tensorflow/serving/predict"

    for _ in range(3):
        assert http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["x"]})[0] == 200
    assert http(server.rest_port, "/v1/models/tiny:predict", {"instances": [1]})[0] == 400
    status, text = http(server.rest_port, "/monitoring/prometheus/metrics")
    assert status == 200
    rest = dict(model="tiny", signature="serving_default", api="rest")
    assert metric(text, "tfrec_serving_requests_total", **rest, status="OK") >= 3
    assert metric(text, "tfrec_serving_requests_total", **rest, status="INVALID_ARGUMENT") >= 1
    assert metric(text, "tfrec_serving_request_latency_seconds_bucket", **rest, le="+Inf") >= 4
    assert metric(text, "tfrec_serving_model_version", model="tiny") == 1


# ------------------------------------------------------------------ malformed requests
BAD_REST = [
    ("invalid JSON", "tiny:predict", b"{not json", 400),
    ("empty body", "tiny:predict", b"", 400),
    ("body not an object", "tiny:predict", [1, 2], 400),
    ("neither instances nor inputs", "tiny:predict", {"signature_name": "retrieve"}, 400),
    ("both instances and inputs", "tiny:predict", {"instances": ["a"], "inputs": ["a"]}, 400),
    ("empty instances", "tiny:predict", {"instances": []}, 400),
    ("unknown input name", "tiny:predict", {"instances": [{"query_text": "a", "foo": "b"}]}, 400),
    ("unknown columnar input", "tiny:predict", {"inputs": {"query_text": ["a"], "foo": [1]}}, 400),
    ("missing required input", "tiny:predict", {"inputs": {"exclude_item_ids": [["a"]]}}, 400),
    ("plain value, 2 required", "tiny:predict",
     {"signature_name": "embed_item", "instances": ["a"]}, 400),
    ("number for a string", "tiny:predict", {"instances": [{"query_text": 3}]}, 400),
    ("string for exclusions", "tiny:predict",
     {"instances": [{"query_text": "a", "exclude_item_ids": "item_01"}]}, 400),
    ("rank too high", "tiny:predict", {"inputs": {"query_text": [["a"]]}}, 400),
    ("scalar, no batch", "tiny:predict", {"inputs": {"query_text": "a"}}, 400),
    ("ragged list", "tiny:predict",
     {"inputs": {"query_text": ["a", "b"], "exclude_item_ids": [["x"], ["y", "z"]]}}, 400),
    ("batch sizes differ", "tiny:predict",
     {"inputs": {"query_text": ["a", "b"], "exclude_item_ids": [["x"]]}}, 400),
    ("batch over the limit", "tiny:predict", {"instances": ["q"] * (MAX_BATCH + 1)}, 400),
    ("unknown signature", "tiny:predict", {"signature_name": "nope", "instances": ["a"]}, 400),
    ("signature not a string", "tiny:predict", {"signature_name": 3, "instances": ["a"]}, 400),
    ("classify", "tiny:classify", {"examples": [{"a": 1}]}, 400),
    ("version not a number", "tiny/versions/x:predict", {"instances": ["a"]}, 400),
    ("path characters", "..%2F..%2Fetc:predict", {"instances": ["a"]}, 400),
    ("slash in name", "a%2Fb:predict", {"instances": ["a"]}, 400),
    ("unknown model", "nope:predict", {"instances": ["a"]}, 404),
    ("unknown version", "tiny/versions/7:predict", {"instances": ["a"]}, 404),
    ("body over max_request_bytes", "tiny:predict", {"instances": ["x" * MAX_BYTES]}, 413),
]


@pytest.mark.parametrize("what,path,body,code", BAD_REST, ids=[b[0] for b in BAD_REST])
def test_malformed_rest_request_gets_a_4xx(server, what, path, body, code):
    raw = body if isinstance(body, bytes) else None
    status, answer = http(server.rest_port, f"/v1/models/{path}", body, method="POST", raw=raw)
    assert status == code, answer
    assert isinstance(answer, dict) and set(answer) == {"error"} and answer["error"]
    status, _ = http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["still up"]})
    assert status == 200


def test_other_methods_and_paths_are_client_errors(server):
    assert http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["a"]},
                method="PUT")[0] == 405
    assert http(server.rest_port, "/v1/models/tiny", method="DELETE")[0] == 405
    assert http(server.rest_port, "/v1/models")[0] == 400
    assert http(server.rest_port, "/v1/models/tiny/versions/1/nonsense")[0] == 400
    assert http(server.rest_port, "/elsewhere")[0] == 404
    assert http(server.rest_port, "/v1/models/tiny")[0] == 200


def test_broken_connections_and_bodies_do_not_hurt_the_server(server):
    import socket

    def raw(data: bytes, read: bool = True) -> bytes:
        """Sends bytes; returns one whole answer (headers + Content-Length body)."""
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            sock.sendall(data)
            answer = b""
            while read:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            return answer

    head = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
    assert raw(head + b"Content-Length: 1000\r\n\r\n{\"inst", read=False) == b""  # hangs up
    assert raw(head + b"\r\n").startswith(b"HTTP/1.1 400")  # no Content-Length
    answer = raw(b"garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": ' in answer
    assert raw(head + b"Content-Length: 2\r\n\r\n{}").startswith(b"HTTP/1.1 400")
    assert http(server.rest_port, "/v1/models/tiny:predict", {"instances": ["ok"]})[0] == 200
    text = http(server.rest_port, "/monitoring/prometheus/metrics")[1]
    assert 'status="INTERNAL"' not in text


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


# ------------------------------------------------------------------ batching
def test_batcher_merges_pads_splits_and_isolates_failures():
    calls = []

    def run(inputs):
        calls.append({n: a.copy() for n, a in inputs.items()})
        if b"bad" in inputs["q"].tolist():
            raise ValueError("bad row")
        time.sleep(0.05)
        return {"echo": inputs["q"], "width": np.full(len(inputs["q"]), inputs["e"].shape[1])}

    batcher = Batcher(run, max_batch_size=64, timeout_s=0.5, paddable={"e"},
                      arriving=lambda: 1)  # always "someone arriving": wait the full timeout
    results: dict[int, object] = {}

    def submit(i):
        q = np.array([f"q{i}".encode(), b"bad" if i == 3 else b"ok"], dtype=object)
        e = np.full((2, 2 + i % 2), b"x", dtype=object)  # widths 2 and 3: one size class
        try:
            results[i] = batcher.submit({"q": q, "e": e}, rows=2)
        except ValueError as err:
            results[i] = err

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls[0]["q"]) == 12 and calls[0]["e"].shape == (12, 3)  # merged and padded
    for i in range(6):
        if i == 3:
            assert isinstance(results[i], ValueError)  # only the bad request fails
        else:
            assert results[i]["echo"].tolist() == [f"q{i}".encode(), b"ok"]


def test_batcher_never_pads_narrow_requests_to_a_wide_one():
    """Size classes: a 1000-wide exclusion list runs apart from 2- and 3-wide ones (which merge)."""
    calls = []

    def run(inputs):
        calls.append((len(inputs["q"]), inputs["e"].shape[1]))
        time.sleep(0.05)
        return {"echo": inputs["q"]}

    batcher = Batcher(run, max_batch_size=64, timeout_s=0.5, paddable={"e"}, arriving=lambda: 1)
    widths = [2, 1000, 3, 2, 1000]
    threads = [threading.Thread(target=batcher.submit, args=(
        {"q": np.array([b"q"], dtype=object), "e": np.full((1, w), b"x", dtype=object)}, 1)) for w in widths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(calls) == [(2, 1000), (3, 3)], calls


def test_batcher_deadline_and_cancel_free_a_queued_request():
    """A queued request whose deadline passes, or whose client goes away, leaves the queue at once."""
    release = threading.Event()

    def run(inputs):
        release.wait(10)
        return {"echo": inputs["q"]}

    batcher = Batcher(run, max_batch_size=1, timeout_s=0.0)
    one = {"q": np.array([b"q"], dtype=object)}
    first = threading.Thread(target=batcher.submit, args=(one, 1))
    first.start()
    time.sleep(0.1)  # the first request is running (and blocked); the next ones queue behind it
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        batcher.submit(one, 1, deadline=time.monotonic() + 0.3)
    assert 0.25 < time.monotonic() - start < 1.0
    with pytest.raises(DeadlineExceeded):
        batcher.submit(one, 1, cancelled=lambda: time.monotonic() - start > 0.5)
    assert not batcher._queue  # neither is left to run later
    release.set()
    first.join(10)
    assert batcher.submit(one, 1)["echo"].tolist() == [b"q"]


def test_concurrent_requests_get_their_own_answers(server, direct):
    queries = [f"query {i}" for i in range(24)]
    exclude = [[f"item_{j:02d}" for j in range(i % 4)] for i in range(24)]
    want = {q: direct_retrieve(direct, [q], [e])[0][0] for q, e in zip(queries, exclude)}
    rest = client_lib.RestClient("127.0.0.1", server.rest_port, "tiny")
    grpc_client = client_lib.GrpcClient("127.0.0.1", server.grpc_port, "tiny")
    errors, got = [], {}

    def worker(i):
        try:
            c = rest if i % 2 else grpc_client
            got[queries[i]] = [x for x, _ in c.retrieve([queries[i]], exclude=[exclude[i]])[0]]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and got == want


# ------------------------------------------------------------------ versions and lifecycle
def test_swaps_to_a_new_version_under_load_without_failing_requests(tmp_path, caplog):
    base = tmp_path / "swap"
    layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
    v2_dir = tmp_path / "v2"
    write_tiny_model(v2_dir, seed=2)
    want_v2 = tf.saved_model.load(str(v2_dir)).signatures["serving_default"](
        query_text=tf.constant(["q"]), exclude_item_ids=tf.zeros([1, 0], tf.string))
    want_v2 = [i.decode() for i in want_v2["item_ids"].numpy()[0]]

    with running_server({"swap": str(base)}, poll_wait_s=0.1) as server:
        rest = client_lib.RestClient("127.0.0.1", server.rest_port, "swap")
        grpc_client = client_lib.GrpcClient("127.0.0.1", server.grpc_port, "swap")
        stop, failures, answers = threading.Event(), [], []

        def keep_querying(c):
            while not stop.is_set():
                try:
                    answers.append([i for i, _ in c.retrieve(["q"])[0]])
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

        threads = [threading.Thread(target=keep_querying, args=(c,))
                   for c in (rest, rest, grpc_client)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with caplog.at_level("INFO", logger="serving.server"):
            layout.publish_version(base, lambda d: write_tiny_model(d, seed=2))
            deadline = time.time() + 30
            while http(server.rest_port, "/v1/models/swap")[1]["model_version_status"][0][
                    "version"] != "2" and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            # A broken version 3: the server logs it and keeps serving version 2.
            layout.publish_version(base, lambda d: Path(d, "saved_model.pb").write_bytes(b"junk"))
            time.sleep(0.6)
        stop.set()
        for t in threads:
            t.join(10)
        assert not failures, failures[:3]
        assert len(answers) > 20 and answers[-1] == want_v2 and answers[0] != want_v2
        assert http(server.rest_port, "/v1/models/swap")[1]["model_version_status"][0][
            "version"] == "2"
        assert [i for i, _ in rest.retrieve(["q"])[0]] == want_v2
        logs = [r.getMessage() for r in caplog.records if r.name == "serving.server"]
        assert any("version 2 loaded" in m and "swapped from version 1" in m for m in logs)
        assert any("version 3 failed to load" in m and "still serving version 2" in m
                   for m in logs)
        grpc_client.close()


def test_stop_finishes_in_flight_requests(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}) as server:
        started = threading.Semaphore(0)
        for name in ("embed_query", "scaled_embed_query"):  # make both slow
            sig = server.registry.models["tiny"].signatures[name]
            sig.fn = (lambda fast: lambda **kw: (started.release(), time.sleep(1.0),
                                                 fast(**kw))[2])(sig.fn)
        results = {}

        def rest_call():
            results["rest"] = http(server.rest_port, "/v1/models/tiny:predict",
                                   {"signature_name": "embed_query", "instances": ["a"]})[0]

        def grpc_call():
            c = client_lib.GrpcClient("127.0.0.1", server.grpc_port, "tiny")
            results["grpc"] = c.predict({"query_text": ["b"]}, "scaled_embed_query")[
                "embedding"].shape

        threads = [threading.Thread(target=rest_call), threading.Thread(target=grpc_call)]
        for t in threads:
            t.start()
        assert started.acquire(timeout=20) and started.acquire(timeout=20)  # both in flight
        server.stop(grace_s=10)
        for t in threads:
            t.join(10)
        assert results == {"rest": 200, "grpc": (1, 8)}
        with pytest.raises(OSError):
            http(server.rest_port, "/v1/models/tiny", timeout=2)


def test_cli_server_serves_scann_model_and_exits_0_on_sigterm(tiny_export):
    from tests.helpers.spawn import spawn_server as spawn

    proc, port, _, lines = spawn(["--model_config_file", str(tiny_export / "models.config"),
                                  "--batching_parameters_file", str(tiny_export / "batching_parameters.txt"),
                                  "--port", "0", "--rest_api_port", "0", "--file_system_poll_wait_seconds", "0.5"],
                                 timeout_s=60)
    try:
        for name in ("tiny", "tiny_scann"):
            status, body = http(port, f"/v1/models/{name}:predict",
                                {"instances": [{"query_text": "a", "exclude_item_ids": ["item_16"]}]})
            assert status == 200, body
            assert len(body["predictions"][0]["item_ids"]) == 5
            assert "item_16" not in body["predictions"][0]["item_ids"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10  # the reader thread drains what the server wrote before exiting
    while "server stopped" not in "".join(lines) and time.time() < deadline:
        time.sleep(0.05)
    log = "".join(lines)
    assert re.search(r"model tiny_scann version 1 loaded", log)
    assert "server stopped" in log
    assert sum("loaded from" in line for line in lines) == 2  # one line per model load


def test_client_cli_prints_ranked_items_with_text(server, tiny_export, capsys):
    base = str(tiny_export / "tiny")
    assert client_lib.main(["--query", "space opera", "--k", "3", "--port", str(server.rest_port),
                            "--model_name", "tiny", "--model_base_path", base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: space opera" and len(out) == 4
    assert re.match(r"^\s+1  item_\d\d  -?\d+\.\d{4}  Tiny item number \d+$", out[1])
    first = out[1].split()[1]
    assert client_lib.main(["--query", "space opera", "--grpc", "--port", str(server.grpc_port),
                            "--model_name", "tiny", "--exclude", first]) == 0
    out = capsys.readouterr().out
    assert first not in out and len(out.splitlines()) == 6  # no text without items/job dir
    assert client_lib.main(["--query", "x", "--port", str(server.rest_port),
                            "--model_name", "nope"]) == 1


def test_client_cli_runs_as_a_module(server, tiny_export, tmp_path):
    items = tmp_path / "items.tsv"
    items.write_text("item_id\ttext\n" + "".join(f"item_{i:02d}\tTitle {i}\n" for i in range(20)))
    proc = subprocess.run(
        [sys.executable, "-m", "serving.client", "--query", "a", "--port", str(server.rest_port),
         "--model_name", "tiny", "--items", str(items)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+1  item_\d\d  -?\d+\.\d{4}  Title \d+$", proc.stdout, re.M)


def test_model_config_file_is_polled_for_added_and_removed_models(tiny_export, tmp_path):
    """--model_config_file_poll_wait_seconds: models added to models.config are served, removed ones are not."""
    for name in ("first", "second"):
        (tmp_path / name).symlink_to(tiny_export / "tiny", target_is_directory=True)
    config = layout.write_models_config(tmp_path, ["first"])

    def status(server, name):
        return http(server.rest_port, f"/v1/models/{name}")[0]

    def wait_for(check, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if check():
                return True
            time.sleep(0.05)
        return False

    with running_server(layout.read_models_config(config), grpc_port=None, poll_wait_s=0.05,
                        config_file=str(config), config_poll_s=0.1) as server:
        assert status(server, "first") == 200 and status(server, "second") == 404
        layout.write_models_config(tmp_path, ["first", "second"])
        assert wait_for(lambda: status(server, "second") == 200)
        layout.write_models_config(tmp_path, ["second"])
        assert wait_for(lambda: status(server, "first") == 404)
        assert status(server, "second") == 200
        config.write_text("not a config {")  # unreadable: logged, and what is served stays
        time.sleep(0.5)
        assert status(server, "second") == 200 and status(server, "first") == 404
