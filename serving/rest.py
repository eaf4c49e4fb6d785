"""The REST API of the model server: TF Serving's ``/v1/models/...`` endpoints.

Errors are answered as TF Serving does, ``{"error": "..."}``: 400 for a malformed
request (bad JSON, NaN, a string that is not UTF-8, sizes over ``Limits``), 404 for an
unknown model, version or path, 405 (with ``Allow``) for a method the path does not
take, 413 for a body over ``max_request_bytes``, 503 (with ``Retry-After``) past
``max_connections`` open connections or while shutting down, 504 past
``--rest_api_timeout_in_ms``. A client's mistake never gets a 5xx; a 500 is a server
fault, logged once with the request id that its answer names. Keep-alive (HTTP/1.1)
connections are supported, one bounded worker thread each.
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

from serving.limits import check_json_body, reject_json_constant
from serving.rest_decoding import decode_common
from serving.service import ModelService, internal_error, printable, request_id, status_json
from serving.signatures import DEFAULT_SIGNATURE, RequestError, json_response, one_line

log = logging.getLogger("serving.rest")
METRICS_PATH = "/monitoring/prometheus/metrics"
DRAIN_LIMIT = 64 << 20  # unused bodies up to this size are read and dropped, not reset
RETRY_AFTER_S = 1
_PREDICT_RE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:(\w+)$", re.I)
_STATUS_RE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?$", re.I)
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
                "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
                "CANCELLED": 499}


def _busy_answer(reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
            ).encode() + body


def allowed_methods(path: str) -> str | None:
    """The methods a path takes (for 405's ``Allow``), None for a path that does not exist."""
    if path == METRICS_PATH or _STATUS_RE.match(path):
        return "GET"
    if _PREDICT_RE.match(path):
        return "POST"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfrec-serving"
    timeout = 60  # seconds an idle keep-alive connection is kept
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: RestServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        """Protocol-level errors (bad request line, huge headers, unknown method) as JSON as well."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # so that a status line and headers are sent
        self.close_connection = True
        if code == 501:  # a method no handler exists for (HEAD, TRACE, ...)
            self._method_not_allowed()
            return
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _method_not_allowed(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        allow = allowed_methods(path)
        self.close_connection = True  # its body (if any) is not read
        if allow is None:
            self._reply(404, {"error": f"Not found: {self.command} {path[:200]}"})
        else:
            self._reply(405, {"error": f"method {self.command} is not allowed on {path[:200]}; "
                                       f"allowed: {allow}"}, {"Allow": allow})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        ms = self.server.model_service
        with self.server.in_flight():
            if ms.stopping.is_set():
                self.close_connection = True
                self._reply(503, {"error": "the server is shutting down"}, {"Retry-After": str(RETRY_AFTER_S)})
                return
            headers = None
            try:
                code, payload = self._route(ms, method)
            except _MethodNotAllowed as e:
                self.close_connection = True
                code, payload, headers = 405, {"error": printable(e.message)}, {"Allow": e.allow}
            except RequestError as e:
                code, payload = _HTTP_STATUS.get(e.code, 500), {"error": printable(e.message)}
            except OSError:  # the client went away or stalled mid-body: nobody to answer
                self.close_connection = True
                return
            except Exception as e:  # noqa: BLE001 - a bug must not kill the connection thread
                error = internal_error(request_id("rest"), f"{method} {self.path[:200]}", e)
                code, payload = 500, {"error": error.message}
            try:
                self._reply(code, payload, headers)
            except OSError:
                self.close_connection = True

    def _reply(self, code: int, payload: dict | str, headers: dict[str, str] | None = None) -> None:
        if isinstance(payload, str):
            body, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        if hasattr(self, "_headers_buffer"):  # headers and body in one write: one TCP segment
            self._headers_buffer.extend([b"\r\n", body])
            self.flush_headers()
        else:
            self.end_headers()
            self.wfile.write(body)

    def _route(self, ms: ModelService, method: str) -> tuple[int, dict | str]:
        path = urllib.parse.urlsplit(self.path).path
        self._check_content_length()
        allow = allowed_methods(path)
        if allow is not None and method not in allow:
            raise _MethodNotAllowed(f"method {method} is not allowed on {path[:200]}; allowed: {allow}", allow)
        if method == "GET" and path == METRICS_PATH:
            return 200, ms.metrics.render()
        if not path.lower().startswith("/v1/"):
            self._discard_body()
            return 404, {"error": f"Not found: {method} {path[:200]}"}
        if method == "POST" and (m := _PREDICT_RE.match(path)):
            return self._predict(ms, urllib.parse.unquote(m.group(1)), m.group(2), m.group(3))
        self._discard_body()
        if method == "GET" and (m := _STATUS_RE.match(path)):
            name, version = urllib.parse.unquote(m.group(1)), m.group(2)
            if not m.group(3):
                return 200, status_json(ms.status(name, int(version) if version else None))
            model = ms.model(name, int(version) if version else None)
            return 200, {"model_spec": {"name": name, "signature_name": "",
                                        "version": str(model.version)},
                         "metadata": {"signature_def": model.metadata_json}}
        raise RequestError(f"Malformed request: {method} {path[:200]}")

    def _predict(self, ms: ModelService, name: str, version: str | None, verb: str
                 ) -> tuple[int, dict]:
        deadline = time.monotonic() + self.server.timeout_s
        with ms.call("rest", name, deadline, cancelled=self._client_gone) as call:
            body = self._read_json(ms)
            if verb.lower() != "predict":
                raise RequestError(f"'{verb[:50]}' is not supported: only :predict")
            signature = body.get("signature_name", DEFAULT_SIGNATURE) if isinstance(
                body, dict) else DEFAULT_SIGNATURE
            if not isinstance(signature, str):
                raise RequestError("'signature_name' key must be a string value")
            form: list[str] = []

            def parse(sig):
                decoded = decode_common(body, sig, ms.limits)  # the common shapes, fast
                if decoded is None:
                    check_json_body(body, sig, ms.limits)  # sizes and text, before any array
                    decoded = sig.parse_json(body, ms.max_batch_size)
                arrays, rows, fmt = decoded
                form.append(fmt)
                return arrays, rows

            _, outputs = ms.predict(call, name, int(version) if version else None,
                                    signature or DEFAULT_SIGNATURE, parse)
            return 200, json_response(outputs, form[0])

    def _client_gone(self) -> bool:
        """True once the client has closed its connection (polled while the request waits to run)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _check_content_length(self) -> None:
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            self.close_connection = True  # where this body ends is ambiguous
            raise RequestError(f"{len(lengths)} Content-Length headers ({', '.join(lengths)[:100]}); "
                               f"send exactly one")

    def _discard_body(self) -> None:
        """Reads and drops a body we will not use, so that the connection stays usable."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and not length.isdigit()):
            self.close_connection = True
        elif length and int(length) > DRAIN_LIMIT:
            self.close_connection = True  # too big to read: closing may reset the client
        elif length:
            left = int(length)
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)

    def _read_json(self, ms: ModelService) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("a request body with a Content-Length header is required")
        if int(length) > self.server.max_request_bytes:
            self._discard_body()
            raise RequestError(f"request body of {length} bytes is over the limit of "
                               f"{self.server.max_request_bytes} bytes", "RESOURCE_EXHAUSTED")
        raw = self.rfile.read(int(length))
        if not raw.strip():
            raise RequestError("JSON Parse error: The document is empty")
        try:
            return json.loads(raw, parse_constant=reject_json_constant)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError (invalid UTF-8) is a ValueError
            raise RequestError(f"JSON Parse error: {one_line(e, 200)}") from None


class _MethodNotAllowed(RequestError):
    """405: the path exists but does not take this method; ``allow`` lists the ones it takes."""

    def __init__(self, message: str, allow: str):
        super().__init__(message)
        self.allow = allow


class RestServer(HTTPServer):
    """An HTTP server with at most ``max_connections`` connections, one daemon thread each.

    Past the bound a new connection gets 503 with ``Retry-After`` and is closed, so a flood
    of connections costs one short write each, never a thread.
    """

    request_queue_size = 128  # many clients may connect at once

    def __init__(self, service: ModelService, host: str, port: int, max_connections: int = 256,
                 max_request_bytes: int = 4 << 20, timeout_s: float = 30.0):
        super().__init__((host, port), _Handler)
        self.model_service, self.max_request_bytes, self.timeout_s = service, max_request_bytes, timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._inflight = 0
        self._idle = threading.Condition()

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0.05)
                request.sendall(_busy_answer("too many open connections; retry later"))
                request.recv(1 << 16)  # part of what was sent, so that closing does not reset the answer
            except OSError:
                pass
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve_connection, args=(request, client_address),
                         daemon=True).start()  # daemon: idle keep-alive connections never block the exit

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Counts a request being answered so that ``wait_idle`` can wait for it."""
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no request is being answered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout_s)
