"""Prometheus metrics of the model server (``GET /monitoring/prometheus/metrics``), via prometheus_client.

- ``tfrec_serving_requests_total{model,signature,api,status}``: counter; status is a
  gRPC code name (OK, INVALID_ARGUMENT, NOT_FOUND, ...).
- ``tfrec_serving_request_latency_seconds{model,signature,api}``: histogram.
- ``tfrec_serving_batch_size{model}``: histogram of rows per TensorFlow call.
- ``tfrec_serving_model_loads_total{model,result}`` and ``tfrec_serving_model_version{model}``.

Each ``Metrics`` has its own registry, so several servers in one process (tests) do
not share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's counters and histograms; thread-safe (prometheus_client locks its own)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("tfrec_serving_requests", "Requests by final status",
                                 ["model", "signature", "api", "status"], registry=r)
        self._latency = Histogram("tfrec_serving_request_latency_seconds", "Request latency",
                                  ["model", "signature", "api"], buckets=LATENCY_BUCKETS, registry=r)
        self._batches = Histogram("tfrec_serving_batch_size", "Rows per TensorFlow call", ["model"],
                                  buckets=BATCH_BUCKETS, registry=r)
        self._loads = Counter("tfrec_serving_model_loads", "Version load attempts by result",
                              ["model", "result"], registry=r)
        self._versions = Gauge("tfrec_serving_model_version", "Served version", ["model"], registry=r)

    def request(self, model: str, signature: str, api: str, status: str, seconds: float) -> None:
        """Counts one request and records its latency."""
        self._requests.labels(model, signature, api, status).inc()
        self._latency.labels(model, signature, api).observe(seconds)

    def batch(self, model: str, rows: int) -> None:
        """Records the row count of one TensorFlow call."""
        self._batches.labels(model).observe(rows)

    def load(self, model: str, result: str, version: int | None = None) -> None:
        """Counts a model load ("ok" / "error"); a successful one sets the served version."""
        self._loads.labels(model, result).inc()
        if version is not None:
            self._versions.labels(model).set(version)

    def render(self) -> str:
        """The exposition text (format 0.0.4)."""
        return generate_latest(self.registry).decode()
