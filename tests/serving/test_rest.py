"""The REST front end: malformed requests, methods, headers and connections."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from tests.helpers.servers import MAX_BATCH, MAX_BYTES, http, metric, running_server


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, poll_wait_s=0.2,
                        max_batch_size=MAX_BATCH, max_request_bytes=MAX_BYTES) as s:
        yield s


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


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Sends bytes on a fresh connection; returns everything the server sends until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.settimeout(1.0)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return answer


def test_unsupported_methods_get_405_with_allow(server):
    for request, allow in ((b"HEAD /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n", b"GET"),
                           (b"TRACE /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n\r\n", b"POST"),
                           (b"OPTIONS /monitoring/prometheus/metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"GET"),
                           (b"GET /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n\r\n", b"POST"),
                           (b"POST /v1/models/tiny HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"GET")):
        answer = raw_exchange(server.rest_port, request)
        assert answer.startswith(b"HTTP/1.1 405"), answer[:200]
        assert re.search(rb"\r\nAllow: " + allow + rb"\r\n", answer), answer[:300]
    assert raw_exchange(server.rest_port, b"HEAD /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404")


def test_duplicate_or_conflicting_content_length_is_400(server):
    body = b'{"instances": ["a"]}'
    head = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
    for lengths in ((len(body), len(body)), (len(body), 2)):
        headers = b"".join(b"Content-Length: %d\r\n" % n for n in lengths)
        answer = raw_exchange(server.rest_port, head + headers + b"\r\n" + body)
        assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length" in answer, answer[:300]
        assert answer.count(b"HTTP/1.1") == 1  # the connection is closed, the body never read as a request
    assert raw_exchange(server.rest_port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body
                        ).startswith(b"HTTP/1.1 200")


def test_connections_past_max_connections_get_503_with_retry_after(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, grpc_port=None, max_connections=2) as s:
        idle = [socket.create_connection(("127.0.0.1", s.rest_port), timeout=10) for _ in range(2)]
        time.sleep(0.2)  # both are accepted and hold their worker
        try:
            answer = raw_exchange(s.rest_port, b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in answer, answer[:300]
            assert threading.active_count() < 40  # no thread per refused connection
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)  # their workers notice the close and free the slots
        assert http(s.rest_port, "/v1/models/tiny")[0] == 200


def test_a_client_that_goes_away_frees_its_place_in_the_queue(tiny_export):
    with running_server({"tiny": str(tiny_export / "tiny")}, grpc_port=None, max_batch_size=1,
                        num_batch_threads=1) as s:
        sig = s.registry.models["tiny"].signatures["serving_default"]
        fast, started = sig.fn, threading.Event()
        sig.fn = lambda **kw: (started.set(), time.sleep(1.5), fast(**kw))[2]
        first = threading.Thread(target=http, args=(s.rest_port, "/v1/models/tiny:predict", {"instances": ["a"]}))
        first.start()
        assert started.wait(10)  # the first request runs (1.5 s); the next one queues behind it
        body = b'{"instances": ["b"]}'
        with socket.create_connection(("127.0.0.1", s.rest_port)) as sock:
            sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)
            batcher = s.registry.models["tiny"].batchers["serving_default"]
            deadline = time.monotonic() + 5
            while not batcher._queue and time.monotonic() < deadline:
                time.sleep(0.01)
            assert batcher._queue  # queued behind the running one
        time.sleep(0.4)  # the client has hung up: its request leaves the queue well before the first finishes
        assert not batcher._queue and first.is_alive()
        first.join(10)
        text = http(s.rest_port, "/monitoring/prometheus/metrics")[1]
    assert metric(text, "tfrec_serving_requests_total", model="tiny", signature="serving_default", api="rest",
                  status="CANCELLED") == 1
