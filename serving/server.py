"""A TF Serving-compatible model server for tfrec SavedModels (REST + gRPC, in Python).

It exists because stock TensorFlow Serving cannot load the ScaNN index's ops;
this process imports ``scann`` first. It speaks TF Serving's APIs, so clients
and tools written for TF Serving work unchanged::

    python -m serving.server --model_base_path runs/x/export/tfrec --model_name tfrec \\
        --port 8500 --rest_api_port 8501
    python -m serving.server --model_config_file runs/x/export/models.config \\
        --batching_parameters_file runs/x/export/batching_parameters.txt

    curl -d '{"instances": [{"query_text": "space opera"}]}' \\
        http://127.0.0.1:8501/v1/models/tfrec:predict
    GET  /v1/models/NAME[/versions/V]            model status
    GET  /v1/models/NAME[/versions/V]/metadata   signature_def metadata
    POST /v1/models/NAME[/versions/V]:predict    row ("instances") or columnar ("inputs")
    GET  /monitoring/prometheus/metrics          request counts and latency histograms
    gRPC tensorflow.serving.PredictionService: Predict, GetModelMetadata

The newest integer version of each model is served; every
``--file_system_poll_wait_seconds`` a newer version is loaded completely and then
swapped in (in-flight requests finish on the old one; if the new one fails to
load, the old one keeps serving). With ``--model_config_file_poll_wait_seconds N``
the config file is re-read every N seconds: models added to it are served, removed
ones stop (an unreadable file is logged and changes nothing). Port 0 picks a free port (logged). Concurrent
requests for one model+signature are batched (see ``serving.batching``).
``exclude_item_ids`` may be omitted (fed as ``[batch, 0]``). SIGTERM: stop
accepting, finish in-flight requests, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from tfrec.export import layout
from serving.batching import Batcher
from serving.grpc_service import add_services
from serving.metrics import Metrics
from serving.rest import make_http_server
from serving.signatures import RequestError, Signature, one_line

log = logging.getLogger("serving.server")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ServedModel:
    """One loaded version of one model: its signatures, metadata and batchers."""

    def __init__(self, name: str, version: int, path: Path, batcher_args: dict[str, Any]):
        self.name, self.version, self.path = name, version, path
        pb = (path / "saved_model.pb").read_bytes()
        register_custom_ops(scann=name.endswith("_scann") or b"Scann>" in pb)
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in saved_model_pb2.SavedModel.FromString(pb).meta_graphs[0].signature_def.items():
            self.signature_defs.signature_def[key].CopyFrom(sig)
        self.metadata_json = json_format.MessageToDict(
            self.signature_defs, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)
        self.loaded = tf.saved_model.load(str(path))
        self.signatures = {
            k: Signature(k, fn, {n: tf.make_ndarray(t) for n, t in
                                 self.signature_defs.signature_def[k].defaults.items()})
            for k, fn in self.loaded.signatures.items()}
        self.batchers = {k: Batcher(s, paddable=s.paddable, **batcher_args)
                         for k, s in self.signatures.items() if s.batchable}
        for sig in self.signatures.values():  # first calls trace/initialise: do them now
            try:
                sig(sig.complete({n: _dummy(sig.inputs[n]) for n in sig.required})[0])
            except Exception as e:  # noqa: BLE001 - dummy inputs may be meaningless
                log.debug("warm-up of %s/%s skipped: %s", name, sig.name, one_line(e))


def register_custom_ops(scann: bool) -> None:
    """Imports the op libraries tfrec models use (stock TF Serving links text ops in too)."""
    try:
        import tensorflow_text  # noqa: F401  (FastBertNormalize, FastWordpieceTokenize...)
    except ImportError:
        pass
    if scann:
        import scann as _scann  # noqa: F401  (the Scann>* ops of ScaNN indexes)


def _dummy(spec: tf.TensorSpec) -> np.ndarray:
    """One row of "" / 0 with every unknown dimension 0 (for warm-up calls)."""
    shape = [1] + [0 if d is None else d for d in spec.shape.as_list()[1:]]
    if spec.dtype == tf.string:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, spec.dtype.as_numpy_dtype)


class _Call:
    """Book-keeping of one predict/metadata call: 'arriving' counter and metrics."""

    def __init__(self, server: ModelServer, api: str, model: str):
        self.server, self.api, self.status, self.signature = server, api, "OK", ""
        self.model = model if model in server.base_paths else "_unknown"
        self.start, self._arrived = time.perf_counter(), False
        if self.model != "_unknown":
            server._arrive(model, +1)
            self._arrived = True

    def leave(self) -> None:
        """The request is queued (or failed): it no longer counts as arriving."""
        if self._arrived:
            self._arrived = False
            self.server._arrive(self.model, -1)


class ModelServer:
    """Serves the newest version of each model over gRPC and REST.

    Args:
      base_paths: ``{model_name: model_base_path}``.
      host / rest_host: bind addresses (default 127.0.0.1; rest_host defaults to host).
      grpc_port / rest_port: 0 picks a free port, None disables that API.
      poll_wait_s: seconds between checks for new versions.
      max_batch_size: most rows per request and per batched call.
      batch_timeout_micros: longest a request waits for others to batch with.
      max_request_bytes: larger request bodies / messages are refused.
      config_file: the models.config ``base_paths`` came from; with ``config_poll_s`` > 0 it is re-read
        that often: models added to it are served, removed ones stop being served (TF Serving's
        ``--model_config_file_poll_wait_seconds``).
    """

    def __init__(self, base_paths: dict[str, str], host: str = "127.0.0.1",
                 grpc_port: int | None = 0, rest_port: int | None = 0,
                 rest_host: str | None = None, poll_wait_s: float = 2.0,
                 max_batch_size: int = 64, batch_timeout_micros: int = 2000,
                 max_request_bytes: int = 4 << 20, config_file: str | None = None, config_poll_s: float = 0.0):
        for name in base_paths:
            if not _NAME_RE.match(name):
                raise ValueError(f"model name {name!r}: letters, digits, '-' and '_' only")
        self.base_paths = dict(base_paths)
        self.host, self.rest_host = host, rest_host or host
        self.grpc_port, self.rest_port = grpc_port, rest_port
        self.poll_wait_s, self.max_batch_size = poll_wait_s, max_batch_size
        self.max_request_bytes = max_request_bytes
        self.config_file, self.config_poll_s = config_file, config_poll_s
        self._config_read = time.monotonic()
        self.metrics = Metrics()
        self._batcher_args = dict(max_batch_size=max_batch_size,
                                  timeout_s=batch_timeout_micros / 1e6)
        self._models: dict[str, ServedModel] = {}
        self._failed: dict[str, dict[int, tuple]] = {n: {} for n in base_paths}
        self._arriving = {n: 0 for n in base_paths}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._http_inflight = 0
        self.stopping = threading.Event()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- models
    def _arrive(self, name: str, delta: int) -> None:
        with self._lock:
            self._arriving[name] = self._arriving.get(name, 0) + delta  # a model may leave the config meanwhile

    def reload_config(self) -> None:
        """Re-reads ``config_file``: serves the models added to it, stops serving the removed ones.

        An unreadable file is logged and the models being served stay as they are.
        """
        self._config_read = time.monotonic()
        try:
            wanted = layout.read_models_config(self.config_file)
        except (OSError, ValueError) as e:
            log.error("model config %s: %s; still serving %s", self.config_file, one_line(e),
                      ", ".join(sorted(self.base_paths)) or "nothing")
            return
        if wanted == self.base_paths:
            return
        for name in sorted(set(self.base_paths) - set(wanted)):
            self._models.pop(name, None)
            log.info("model %s: no longer in %s; not served any more", name, self.config_file)
        for name, base in sorted(wanted.items()):
            if name in self.base_paths and self.base_paths[name] != base:
                self._models.pop(name, None)  # a new base path: its newest version loads afresh
            if self.base_paths.get(name) != base:
                log.info("model %s: %s %s (from %s)", name, "serving" if name not in self.base_paths else
                         "base path now", base, self.config_file)
            self._failed.setdefault(name, {})
            self._arriving.setdefault(name, 0)
        self.base_paths = dict(wanted)  # replaced, never mutated: request threads read it

    def poll_once(self) -> None:
        """Loads any model whose newest version differs from the one being served."""
        for name, base in self.base_paths.items():
            try:
                self._maybe_load(name, Path(base))
            except Exception as e:  # noqa: BLE001 - the poller must survive anything
                log.error("model %s: polling %s failed: %s", name, base, one_line(e))

    def _maybe_load(self, name: str, base: Path) -> None:
        latest = layout.latest_version(base)
        current = self._models.get(name)
        if latest is None or (current and current.version == latest):
            return
        path = base / str(latest)
        stamp = tuple(p.stat().st_mtime_ns for p in (path, *path.glob("saved_model.pb")))
        if self._failed[name].get(latest) == stamp:
            return  # already failed; retried only if the folder changes
        start = time.perf_counter()
        args = dict(self._batcher_args, arriving=lambda: self._arriving[name],
                    on_batch=lambda rows: self.metrics.batch(name, rows))
        try:
            model = ServedModel(name, latest, path, args)
        except Exception as e:  # noqa: BLE001
            self._failed[name][latest] = stamp
            self.metrics.load(name, "error")
            log.error("model %s version %d failed to load from %s (%s): %s", name, latest, path,
                      f"still serving version {current.version}" if current else "nothing served",
                      one_line(e))
            return
        self._models[name] = model  # the swap: later requests see the new version
        self.metrics.load(name, "ok", latest)
        log.info("model %s version %d loaded from %s in %.2fs (%s)", name, latest, path,
                 time.perf_counter() - start,
                 f"swapped from version {current.version}" if current else "first version")

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """The served model; RequestError NOT_FOUND (or INVALID_ARGUMENT for a bad name)."""
        if not _NAME_RE.match(name):
            raise RequestError(f"invalid model name {name[:100]!r}: letters, digits, '-' and '_'")
        model = self._models.get(name)
        if model is None or (version is not None and version != model.version):
            which = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise RequestError(f"Servable not found for request: {which}", "NOT_FOUND")
        return model

    def predict(self, call: _Call, name: str, version: int | None, signature_name: str,
                parse: Callable[[Signature], tuple[dict[str, np.ndarray], int]]
                ) -> tuple[ServedModel, dict[str, np.ndarray]]:
        """Resolves model+signature, parses with ``parse``, runs (batched); RequestError on misuse."""
        model = self.model(name, version)
        sig = model.signatures.get(signature_name)
        if sig is None:
            raise RequestError(f'Serving signature name: "{signature_name[:100]}" not found in '
                               f"signature def (have: {', '.join(sorted(model.signatures))})")
        call.signature = signature_name
        arrays, rows = parse(sig)
        try:
            if signature_name in model.batchers:
                return model, model.batchers[signature_name].submit(arrays, rows, call.leave)
            call.leave()
            return model, sig(arrays)
        except tf.errors.InvalidArgumentError as e:
            raise RequestError(one_line(e)) from None

    @contextmanager
    def call(self, api: str, model_name: str) -> Iterator[_Call]:
        """Wraps one request: arriving counter, metrics by status."""
        c = _Call(self, api, model_name)
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

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Loads the newest versions, opens the ports, starts polling."""
        self.poll_once()
        if self.grpc_port is not None:
            self._grpc = grpc.server(
                futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc"),
                options=[("grpc.max_receive_message_length", self.max_request_bytes),
                         ("grpc.so_reuseport", 0)])
            add_services(self, self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
            self._grpc.start()
            log.info("gRPC API on %s:%d", self.host, self.grpc_port)
        if self.rest_port is not None:
            self._http = make_http_server(self, self.rest_host, self.rest_port)
            self.rest_port = self._http.server_address[1]
            self._threads.append(threading.Thread(target=self._http.serve_forever,
                                                  name="rest", daemon=True))
            log.info("REST API on %s:%d", self.rest_host, self.rest_port)
        self._threads.append(threading.Thread(target=self._poll, name="poll", daemon=True))
        for t in self._threads:
            t.start()

    def _poll(self) -> None:
        while not self.stopping.wait(self.poll_wait_s):
            if self.config_file and self.config_poll_s > 0 and \
                    time.monotonic() - self._config_read >= self.config_poll_s:
                self.reload_config()
            self.poll_once()

    @contextmanager
    def http_request(self) -> Iterator[None]:
        """Counts an in-flight HTTP request so that ``stop`` can wait for it."""
        with self._lock:
            self._http_inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._http_inflight -= 1
                self._idle.notify_all()

    def stop(self, grace_s: float = 30.0) -> None:
        """Stops accepting, waits up to ``grace_s`` for in-flight requests, closes."""
        self.stopping.set()
        grpc_done = self._grpc.stop(grace_s) if self._grpc else None
        if self._http:
            self._http.shutdown()
            self._http.server_close()
            with self._lock:
                self._idle.wait_for(lambda: self._http_inflight == 0, grace_s)
        if grpc_done:
            grpc_done.wait(grace_s)
        log.info("server stopped")


def spawn(flags: list[str], timeout_s: float = 120.0):
    """Starts ``python -m serving.server FLAGS`` (e.g. with ``--port 0 --rest_api_port 0``) as a child process.

    Waits until it logs both API ports. Returns ``(proc, rest_port, grpc_port, lines)``: ``lines`` keeps
    filling with its stderr from a daemon thread. RuntimeError (with the log's tail) if it exits or stalls.
    """
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", *flags], cwd=repo, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(repo)), text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        text = "".join(lines)
        rest, grpc_port = (re.search(rf"{api} API on [\d.]+:(\d+)", text) for api in ("REST", "gRPC"))
        if rest and grpc_port:
            return proc, int(rest.group(1)), int(grpc_port.group(1)), lines
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise RuntimeError("the server did not start:\n" + "".join(lines)[-2000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n")[0])
    p.add_argument("--model_base_path", help="EXPORT/<model_name>: integer version folders")
    p.add_argument("--model_name", default="default", help="name used with --model_base_path")
    p.add_argument("--model_config_file", help="text-format ModelServerConfig (models.config)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0: pick one)")
    p.add_argument("--host", default="127.0.0.1", help="bind address of the gRPC API")
    p.add_argument("--rest_api_host", default=None, help="bind address of REST (default --host)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0)
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                   help="re-read --model_config_file this often (0: read once at start)")
    p.add_argument("--batching_parameters_file", help="text-format BatchingParameters")
    p.add_argument("--max_batch_size", type=int, help="default 64 (or the batching file's)")
    p.add_argument("--batch_timeout_micros", type=int, help="default 2000 (or the file's)")
    p.add_argument("--max_request_bytes", type=int, default=4 << 20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.model_base_path) == bool(args.model_config_file):
        p.error("give exactly one of --model_base_path or --model_config_file")
    try:
        base_paths = (layout.read_models_config(args.model_config_file) if args.model_config_file
                      else {args.model_name: str(Path(args.model_base_path).absolute())})
        batching = (layout.read_batching_parameters(args.batching_parameters_file)
                    if args.batching_parameters_file else {})
        server = ModelServer(
            base_paths, host=args.host, grpc_port=args.port, rest_port=args.rest_api_port,
            rest_host=args.rest_api_host, poll_wait_s=args.file_system_poll_wait_seconds,
            max_batch_size=args.max_batch_size or int(batching.get("max_batch_size", 64)),
            batch_timeout_micros=(args.batch_timeout_micros if args.batch_timeout_micros is not None
                                  else int(batching.get("batch_timeout_micros", 2000))),
            max_request_bytes=args.max_request_bytes,
            config_file=args.model_config_file, config_poll_s=args.model_config_file_poll_wait_seconds)
        server.start()
    except (OSError, ValueError, RuntimeError) as e:
        print(f"serving.server: {one_line(e)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("stopping: finishing in-flight requests")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
