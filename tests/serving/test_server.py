"""serving.server end to end: REST (urllib) and gRPC (the real TF Serving stub) on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from serving import client as client_lib
from tests.helpers.servers import MAX_BATCH, MAX_BYTES, http, metric, predict_request, running_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=0.2,
                        max_batch_size=MAX_BATCH, max_request_bytes=MAX_BYTES) as s:
        yield s


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
    want = direct["embed_item"](item_id=tf.constant(["x"]), item_text=tf.constant(["y"]))["embedding"].numpy()
    assert status == 200 and want.shape == (1, 8)
    np.testing.assert_allclose(body["predictions"], want, rtol=1e-5, atol=1e-6)


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
