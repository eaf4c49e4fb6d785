"""A TF Serving-compatible model server for tfrec SavedModels (REST + gRPC, in Python).

It exists because stock TensorFlow Serving cannot load the ScaNN index's ops;
this process imports ``scann`` first. It speaks TF Serving's APIs and takes its
flags, so clients, tools and command lines written for TF Serving work unchanged::

    python -m serving.server --model_base_path runs/x/export/tfrec --model_name tfrec \\
        --port 8500 --rest_api_port 8501
    python -m serving.server --model_config_file runs/x/export/models.config \\
        --batching_parameters_file runs/x/export/batching_parameters.txt

    curl -d '{"instances": [{"query_text": "space opera"}]}' \\
        http://127.0.0.1:8501/v1/models/tfrec:predict
    GET  /v1/models/NAME[/versions/V]            model status (failed loads too, with their error)
    GET  /v1/models/NAME[/versions/V]/metadata   signature_def metadata
    POST /v1/models/NAME[/versions/V]:predict    row ("instances") or columnar ("inputs")
    GET  /monitoring/prometheus/metrics          request counts and latency histograms
    gRPC tensorflow.serving.PredictionService: Predict, GetModelMetadata; ModelService: GetModelStatus

The newest integer version of each model is served (``serving.models``): every
``--file_system_poll_wait_seconds`` a newer version is loaded completely and then
swapped in; one that fails to load is retried (``--max_num_load_retries``,
``--load_retry_interval_micros``) while the old one keeps serving. With
``--model_config_file_poll_wait_seconds N`` the config file is re-read every N
seconds. Port 0 picks a free port (logged). Concurrent requests for one
model+signature are batched (``serving.batching``; ``--enable_batching=false`` turns
it off). No request may cost unbounded work (``serving.limits``): ``--max_batch_size``
rows, ``--max_exclusions`` (default 1000) excluded ids per row, ``--max_request_bytes``,
``--max_connections`` open REST connections, ``--rest_api_timeout_in_ms`` or the gRPC
deadline. ``exclude_item_ids`` may be omitted (fed as ``[batch, 0]``). SIGTERM: stop
accepting, finish in-flight requests, exit 0.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import grpc
import tensorflow as tf

from tfrec.export import layout
from serving.grpc_service import add_services
from serving.limits import Limits
from serving.rest import RestServer
from serving.service import ModelService
from serving.signatures import one_line

log = logging.getLogger("serving.server")
TRIM_EVERY_S = 60.0  # malloc_trim locks the heap while it walks it: not on every poll
# TF Serving flags that change nothing here: accepted so that its command lines run, and logged.
IGNORED_FLAGS = ("enable_model_warmup", "monitoring_config_file", "grpc_channel_arguments",
                 "per_process_gpu_memory_fraction", "saved_model_tags", "enable_signature_method_name_check",
                 "xla_cpu_compilation_enabled", "num_load_threads", "num_unload_threads",
                 "flush_filesystem_caches", "allow_version_labels_for_unavailable_models",
                 "platform_config_file", "tensorflow_session_parallelism", "rest_api_num_threads",
                 "enable_profiler", "thread_pool_factory_config_file", "mixed_precision",
                 "skip_initialize_tpu", "remove_unused_fields_from_bundle_metagraph",
                 "num_request_iterations_for_warmup")


class ModelServer(ModelService):
    """Serves the newest version of each model over gRPC and REST.

    Args:
      base_paths: ``{model_name: model_base_path}``.
      host / rest_host: bind addresses (default 127.0.0.1; rest_host defaults to host).
      grpc_port / rest_port: 0 picks a free port, None disables that API.
      poll_wait_s: seconds between checks for new versions.
      max_batch_size / max_exclusions: per-request bounds (``serving.limits.Limits``).
      batch_timeout_micros: longest a request waits for others to batch with.
      max_request_bytes: larger request bodies / messages are refused.
      max_connections: open REST connections; more get 503 with Retry-After.
      grpc_max_threads: threads answering gRPC calls.
      rest_timeout_s: longest a REST predict waits for its answer (504 after).
      config_file: the models.config ``base_paths`` came from; with ``config_poll_s`` > 0 it is re-read
        that often: models added to it are served, removed ones stop being served (TF Serving's
        ``--model_config_file_poll_wait_seconds``).
      **service_args: ``enable_batching``, ``num_batch_threads``, ``max_load_retries``, ``load_retry_interval_s``.
    """

    def __init__(self, base_paths: dict[str, str], host: str = "127.0.0.1",
                 grpc_port: int | None = 0, rest_port: int | None = 0,
                 rest_host: str | None = None, poll_wait_s: float = 2.0,
                 max_batch_size: int = 64, max_exclusions: int = 1000, batch_timeout_micros: int = 2000,
                 max_request_bytes: int = 4 << 20, max_connections: int = 256, grpc_max_threads: int = 32,
                 rest_timeout_s: float = 30.0, config_file: str | None = None, config_poll_s: float = 0.0,
                 **service_args):
        super().__init__(base_paths, Limits(max_batch_size=max_batch_size, max_exclusions=max_exclusions),
                         batch_timeout_micros=batch_timeout_micros, **service_args)
        self.host, self.rest_host = host, rest_host or host
        self.grpc_port, self.rest_port = grpc_port, rest_port
        self.poll_wait_s, self.max_request_bytes = poll_wait_s, max_request_bytes
        self.max_connections, self.grpc_max_threads = max_connections, grpc_max_threads
        self.rest_timeout_s = rest_timeout_s
        self.config_file, self.config_poll_s = config_file, config_poll_s
        self._config_read = self._trimmed = time.monotonic()
        self._grpc: grpc.Server | None = None
        self._http: RestServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def base_paths(self) -> dict[str, str]:
        return self.registry.base_paths

    def poll_once(self) -> None:
        """Loads any model whose newest version differs from the one being served."""
        self.registry.poll_once()

    def reload_config(self) -> None:
        """Re-reads ``config_file``; an unreadable file is logged and changes nothing."""
        self._config_read = time.monotonic()
        try:
            wanted = layout.read_models_config(self.config_file)
        except (OSError, ValueError) as e:
            log.error("model config %s: %s; still serving %s", self.config_file, one_line(e),
                      ", ".join(sorted(self.base_paths)) or "nothing")
            return
        self.registry.replace_base_paths(wanted, str(self.config_file))

    def start(self) -> None:
        """Loads the newest versions, opens the ports, starts polling."""
        self.poll_once()
        if self.grpc_port is not None:
            self._grpc = grpc.server(
                futures.ThreadPoolExecutor(max_workers=self.grpc_max_threads, thread_name_prefix="grpc"),
                options=[("grpc.max_receive_message_length", self.max_request_bytes),
                         ("grpc.so_reuseport", 0)])
            add_services(self, self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
            self._grpc.start()
            log.info("gRPC API on %s:%d", self.host, self.grpc_port)
        if self.rest_port is not None:
            self._http = RestServer(self, self.rest_host, self.rest_port, self.max_connections,
                                    self.max_request_bytes, self.rest_timeout_s)
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
            if time.monotonic() - self._trimmed >= TRIM_EVERY_S:
                self._trimmed = time.monotonic()
                _release_free_memory()


    def stop(self, grace_s: float = 30.0) -> None:
        """Stops accepting, waits up to ``grace_s`` for in-flight requests, closes."""
        self.stopping.set()
        grpc_done = self._grpc.stop(grace_s) if self._grpc else None
        if self._http:
            self._http.shutdown()
            self._http.server_close()
            self._http.wait_idle(grace_s)
        if grpc_done:
            grpc_done.wait(grace_s)
        log.info("server stopped")


def _tune_malloc() -> None:
    """A fixed mmap threshold for glibc's malloc (call once, before the server starts).

    glibc raises its mmap threshold to the size of every large block freed (up to 32 MB), so after
    one 4 MB request body the next ones come from the heap arenas and stay there; with a fixed
    threshold large blocks are mapped and unmapped, and the RSS follows the live data
    (bench/load.py --soak, 150 s: RSS +16% without it, +0.8% with it).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: the request body limit
    except (OSError, AttributeError):
        pass


def _release_free_memory() -> None:
    """Hands freed heap pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    Large requests (a 4 MB JSON body, 64 rows x 1000 ids) allocate and free many small objects
    from many threads; glibc keeps those pages in its per-thread arenas, so without this the
    RSS drifts up by the high-water mark of every arena.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _flag_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_flags(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with TF Serving's flag names (see the module docstring)."""
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
    p.add_argument("--enable_batching", type=_flag_bool, nargs="?", const=True, default=True,
                   help="batch concurrent requests (default true here; false in TF Serving)")
    p.add_argument("--batching_parameters_file", help="text-format BatchingParameters")
    p.add_argument("--max_batch_size", type=int, help="most rows per request and per call: default 64 "
                   "(or the batching file's)")
    p.add_argument("--batch_timeout_micros", type=int, help="default 2000 (or the file's)")
    p.add_argument("--max_exclusions", type=int, default=1000,
                   help="most exclude_item_ids per row of a request (default 1000)")
    p.add_argument("--max_request_bytes", type=int, default=4 << 20)
    p.add_argument("--max_connections", type=int, default=256,
                   help="open REST connections; more are answered 503 with Retry-After")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                   help="longest a REST predict waits (504 after)")
    p.add_argument("--grpc_max_threads", type=int, default=32, help="threads answering gRPC calls")
    p.add_argument("--max_num_load_retries", type=int, default=5, help="retries of a failed version load")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="first retry delay of a failed load; doubles with every retry")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0: TensorFlow's default")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0: TensorFlow's default")
    p.add_argument("--ssl_config_file", help="not supported: the server refuses to start without TLS "
                   "rather than serve in plain text")
    for name in IGNORED_FLAGS:
        p.add_argument(f"--{name}", nargs="?", const="true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.model_base_path and not args.model_config_file:
        p.error("give --model_base_path (with --model_name) or --model_config_file")
    if args.ssl_config_file:
        p.error("--ssl_config_file: TLS is not supported by this server; put a TLS proxy in front of it")
    for flag in ("max_exclusions", "max_connections", "grpc_max_threads", "rest_api_timeout_in_ms"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_flags(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in IGNORED_FLAGS:
        if getattr(args, name) is not None:
            log.info("--%s=%s: a TF Serving flag this server accepts and ignores", name, getattr(args, name))
    if args.model_config_file and args.model_base_path:  # the tensorflow/serving image's entrypoint passes both
        log.info("--model_base_path=%s: ignored, --model_config_file names the models (as in TF Serving)",
                 args.model_base_path)
    _tune_malloc()
    try:
        if args.tensorflow_intra_op_parallelism:
            tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
        if args.tensorflow_inter_op_parallelism:
            tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
        base_paths = (layout.read_models_config(args.model_config_file) if args.model_config_file
                      else {args.model_name: str(Path(args.model_base_path).absolute())})
        batching = (layout.read_batching_parameters(args.batching_parameters_file)
                    if args.batching_parameters_file else {})
        server = ModelServer(
            base_paths, host=args.host, grpc_port=args.port, rest_port=args.rest_api_port,
            rest_host=args.rest_api_host, poll_wait_s=args.file_system_poll_wait_seconds,
            max_batch_size=args.max_batch_size or int(batching.get("max_batch_size", 64)),
            max_exclusions=args.max_exclusions,
            batch_timeout_micros=(args.batch_timeout_micros if args.batch_timeout_micros is not None
                                  else int(batching.get("batch_timeout_micros", 2000))),
            max_request_bytes=args.max_request_bytes, max_connections=args.max_connections,
            grpc_max_threads=args.grpc_max_threads, rest_timeout_s=args.rest_api_timeout_in_ms / 1e3,
            config_file=args.model_config_file, config_poll_s=args.model_config_file_poll_wait_seconds,
            enable_batching=args.enable_batching, num_batch_threads=int(batching.get("num_batch_threads", 2)),
            max_load_retries=args.max_num_load_retries,
            load_retry_interval_s=args.load_retry_interval_micros / 1e6)
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
