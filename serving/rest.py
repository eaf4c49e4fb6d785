"""The REST API of ``serving.server``: TF Serving's ``/v1/models/...`` endpoints.

Errors are answered as TF Serving does: ``{"error": "..."}`` with 400 for a
malformed request, 404 for an unknown model or version, 413 for a body over
``max_request_bytes``; a malformed request never gets a 5xx. Keep-alive
(HTTP/1.1) connections are supported.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from serving.signatures import DEFAULT_SIGNATURE, RequestError, json_response, one_line

if TYPE_CHECKING:
    from serving.server import ModelServer

log = logging.getLogger("serving.rest")
METRICS_PATH = "/monitoring/prometheus/metrics"
DRAIN_LIMIT = 64 << 20  # unused bodies up to this size are read and dropped, not reset
_PREDICT_RE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:(\w+)$", re.I)
_STATUS_RE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?$", re.I)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfrec-serving"
    timeout = 60  # seconds an idle keep-alive connection is kept
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        """Protocol-level errors (bad request line, huge headers) as JSON as well."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # so that a status line and headers are sent
        self.close_connection = True
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _other_method(self) -> None:  # answered as a malformed request (400), never a 501
        self._handle(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _handle(self, method: str) -> None:
        ms: ModelServer = self.server.model_server  # type: ignore[attr-defined]
        with ms.http_request():
            if ms.stopping.is_set():
                self.close_connection = True
                self._reply(503, {"error": "the server is shutting down"})
                return
            try:
                code, payload = self._route(ms, method)
            except RequestError as e:
                code, payload = e.http_status, {"error": e.message}
            except OSError:  # the client went away or stalled mid-body: nobody to answer
                self.close_connection = True
                return
            except Exception as e:  # noqa: BLE001 - a bug must not kill the connection thread
                log.exception("internal error on %s %s", method, self.path[:200])
                code, payload = 500, {"error": f"internal error: {one_line(e)}"}
            try:
                self._reply(code, payload)
            except OSError:
                self.close_connection = True

    def _reply(self, code: int, payload: dict | str) -> None:
        if isinstance(payload, str):
            body, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if hasattr(self, "_headers_buffer"):  # headers and body in one write: one TCP segment
            self._headers_buffer.extend([b"\r\n", body])
            self.flush_headers()
        else:
            self.end_headers()
            self.wfile.write(body)

    def _route(self, ms: ModelServer, method: str) -> tuple[int, dict | str]:
        path = urllib.parse.urlsplit(self.path).path
        if method == "GET" and path == METRICS_PATH:
            return 200, ms.metrics.render()
        if not path.lower().startswith("/v1/"):
            self._discard_body()
            return 404, {"error": f"Not found: {method} {path[:200]}"}
        if method == "POST" and (m := _PREDICT_RE.match(path)):
            name, version, verb = urllib.parse.unquote(m.group(1)), m.group(2), m.group(3)
            with ms.call("rest", name) as call:
                body = self._read_json(ms)
                if verb.lower() != "predict":
                    raise RequestError(f"'{verb[:50]}' is not supported: only :predict")
                signature = body.get("signature_name", DEFAULT_SIGNATURE) if isinstance(
                    body, dict) else DEFAULT_SIGNATURE
                if not isinstance(signature, str):
                    raise RequestError("'signature_name' key must be a string value")
                fmt: list[str] = []

                def parse(sig):
                    arrays, rows, form = sig.parse_json(body, ms.max_batch_size)
                    fmt.append(form)
                    return arrays, rows

                _, outputs = ms.predict(call, name, int(version) if version else None,
                                        signature or DEFAULT_SIGNATURE, parse)
                return 200, json_response(outputs, fmt[0])
        self._discard_body()
        if method == "GET" and (m := _STATUS_RE.match(path)):
            name, version = urllib.parse.unquote(m.group(1)), m.group(2)
            try:
                model = ms.model(name, int(version) if version else None)
            except RequestError as e:
                if e.code == "NOT_FOUND" and not m.group(3):
                    e.message = (f"Could not find version {version} of model {name}" if version
                                 else f"Could not find any versions of model {name}")
                raise
            if m.group(3):
                return 200, {"model_spec": {"name": name, "signature_name": "",
                                            "version": str(model.version)},
                             "metadata": {"signature_def": model.metadata_json}}
            return 200, {"model_version_status": [{
                "version": str(model.version), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]}
        raise RequestError(f"Malformed request: {method} {path[:200]}")

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

    def _read_json(self, ms: ModelServer) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("a request body with a Content-Length header is required")
        if int(length) > ms.max_request_bytes:
            self._discard_body()
            raise RequestError(f"request body of {length} bytes is over the limit of "
                               f"{ms.max_request_bytes} bytes", "RESOURCE_EXHAUSTED")
        raw = self.rfile.read(int(length))
        if not raw.strip():
            raise RequestError("JSON Parse error: The document is empty")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise RequestError(f"JSON Parse error: {one_line(e, 200)}") from None


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # many clients may connect at once
    daemon_threads = True  # idle keep-alive connections must not block the exit


def make_http_server(ms: ModelServer, host: str, port: int) -> ThreadingHTTPServer:
    """A threaded HTTP server bound to (host, port) answering for ``ms``."""
    httpd = _HTTPServer((host, port), _Handler)
    httpd.model_server = ms  # type: ignore[attr-defined]
    return httpd
