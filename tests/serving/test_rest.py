"""The REST front end: malformed requests, methods, headers and connections."""

from __future__ import annotations

import re

import pytest

from tests.helpers.servers import MAX_BATCH, MAX_BYTES, http, running_server


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
