"""What the REST and gRPC front ends share: models, limits, predict, per-request book-keeping.

``ModelService`` knows no protocol: ``serving.rest`` and ``serving.grpc_service``
decode a request, call ``predict`` inside ``call(...)``, and encode the answer;
``serving.server`` owns the ports and the process. A client's mistake is a
``RequestError`` (4xx / INVALID_ARGUMENT...); anything else is the server's own fault:
``internal_error`` logs it once, with a request id that the answer carries too.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from serving.batching import DeadlineExceeded
from serving.limits import Limits, check_finite
from serving.metrics import Metrics
from serving.models import ModelRegistry, ServedModel, VersionStatus
from serving.signatures import RequestError, Signature, one_line

log = logging.getLogger("serving.server")
_request_ids = itertools.count(1)


def request_id(api: str) -> str:
    """A process-unique id for one request, as written in logs and error answers."""
    return f"{api}-{next(_request_ids)}"


class Call:
    """Book-keeping of one request: its id, the 'arriving' counter, its deadline and metrics.

    Args:
      deadline: ``time.monotonic()`` instant after which the request stops waiting.
      cancelled: true once the client has gone away.
    """

    def __init__(self, service: ModelService, api: str, model: str, deadline: float,
                 cancelled: Callable[[], bool]):
        self.service, self.api, self.status, self.signature = service, api, "OK", ""
        self.id = request_id(api)
        self.deadline, self.cancelled = deadline, cancelled
        self.model = model if model in service.registry.base_paths else "_unknown"
        self.start, self._arrived = time.perf_counter(), False
        if self.model != "_unknown":
            service._arrive(model, +1)
            self._arrived = True

    def leave(self) -> None:
        """The request is queued (or failed): it no longer counts as arriving."""
        if self._arrived:
            self._arrived = False
            self.service._arrive(self.model, -1)


class ModelService:
    """Serves predict, metadata and status for the models of a ``ModelRegistry``.

    Args:
      base_paths: ``{model_name: model_base_path}``.
      limits: per-request bounds (see ``serving.limits``).
      batch_timeout_micros: longest a request waits for others to batch with.
      enable_batching: False runs every request alone.
      num_batch_threads: most batches of one signature running at once.
      max_load_retries / load_retry_interval_s: retries of a version that failed to load.
    """

    def __init__(self, base_paths: dict[str, str], limits: Limits = Limits(),
                 batch_timeout_micros: int = 2000, enable_batching: bool = True, num_batch_threads: int = 2,
                 max_load_retries: int = 5, load_retry_interval_s: float = 60.0):
        self.limits = limits
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self._arriving: dict[str, int] = {n: 0 for n in base_paths}
        self._lock = threading.Lock()
        batcher_args = dict(max_batch_size=limits.max_batch_size, timeout_s=batch_timeout_micros / 1e6,
                            num_batch_threads=num_batch_threads) if enable_batching else None
        self.registry = ModelRegistry(
            base_paths, batcher_args,
            batcher_hooks=lambda name: dict(arriving=lambda: self._arriving.get(name, 0),
                                            on_batch=lambda rows: self.metrics.batch(name, rows)),
            on_load=self.metrics.load, max_load_retries=max_load_retries,
            load_retry_interval_s=load_retry_interval_s)

    @property
    def max_batch_size(self) -> int:
        return self.limits.max_batch_size

    def _arrive(self, name: str, delta: int) -> None:
        with self._lock:
            self._arriving[name] = self._arriving.get(name, 0) + delta  # a model may leave the config meanwhile

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """The served model (see ``ModelRegistry.model``)."""
        return self.registry.model(name, version)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """The versions' states (see ``ModelRegistry.status``)."""
        return self.registry.status(name, version)

    def predict(self, call: Call, name: str, version: int | None, signature_name: str,
                parse: Callable[[Signature], tuple[dict[str, np.ndarray], int]]
                ) -> tuple[ServedModel, dict[str, np.ndarray]]:
        """Resolves model+signature, parses with ``parse``, runs (batched); RequestError on misuse.

        ``parse(signature)`` must check ``self.limits`` before it builds any array.
        """
        model = self.model(name, version)
        sig = model.signatures.get(signature_name)
        if sig is None:
            raise RequestError(f'Serving signature name: "{signature_name[:100]}" not found in '
                               f"signature def (have: {', '.join(sorted(model.signatures))})")
        call.signature = signature_name
        arrays, rows = parse(sig)
        check_finite(arrays)
        try:
            if signature_name in model.batchers:
                return model, model.batchers[signature_name].submit(
                    arrays, rows, call.leave, deadline=call.deadline, cancelled=call.cancelled)
            call.leave()
            if time.monotonic() > call.deadline:
                raise DeadlineExceeded("deadline exceeded")
            return model, sig(arrays)
        except tf.errors.InvalidArgumentError as e:
            raise RequestError(one_line(e)) from None
        except DeadlineExceeded as e:
            raise RequestError(f"request {e}", "CANCELLED" if call.cancelled() else "DEADLINE_EXCEEDED") from None

    @contextmanager
    def call(self, api: str, model_name: str, deadline: float = float("inf"),
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[Call]:
        """Wraps one request: arriving counter, metrics by status."""
        c = Call(self, api, model_name, deadline, cancelled)
        try:
            yield c
        except RequestError as e:
            c.status = e.code
            raise
        except OSError:  # the client's connection failed
            c.status = "CANCELLED"
            raise
        except BaseException:
            if c.status == "OK":
                c.status = "INTERNAL"
            raise
        finally:
            c.leave()
            self.metrics.request(c.model, c.signature, api, c.status, time.perf_counter() - c.start)


def printable(message: str, limit: int = 1000) -> str:
    """An error message as one printable line: control characters and lone surrogates escaped, shortened.

    Messages quote what the client sent (input names, values); a newline or a surrogate in them
    must neither break a log line nor fail the encoding of a gRPC status.
    """
    text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in message[:limit])
    return text + ("..." if len(message) > limit else "")


def internal_error(request_id: str, what: str, error: BaseException) -> RequestError:
    """Logs a server fault (with its traceback) under ``request_id``; the error to answer with."""
    log.error("request %s: internal error on %s: %s", request_id, what, one_line(error), exc_info=error)
    return RequestError(f"internal error (request id {request_id}): {one_line(error, 200)}", "INTERNAL")


def status_json(rows: list[VersionStatus]) -> dict[str, Any]:
    """TF Serving's REST model status body."""
    return {"model_version_status": [
        {"version": str(r.version), "state": r.state,
         "status": {"error_code": r.error_code, "error_message": r.error_message}} for r in rows]}
