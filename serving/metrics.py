"""Prometheus text metrics of the model server (``GET /monitoring/prometheus/metrics``).

- ``tfrec_serving_requests_total{model,signature,api,status}``: counter; status is a
  gRPC code name (OK, INVALID_ARGUMENT, NOT_FOUND, ...).
- ``tfrec_serving_request_latency_seconds{model,signature,api}``: histogram.
- ``tfrec_serving_batch_size{model}``: histogram of rows per TensorFlow call.
- ``tfrec_serving_model_loads_total{model,result}`` and ``tfrec_serving_model_version{model}``.
"""

from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


def _labels(**kv: str) -> str:
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
           for k, v in kv.items()}
    return ",".join(f'{k}="{v}"' for k, v in esc.items())


class Metrics:
    """Thread-safe counters and histograms rendered in Prometheus text format 0.0.4."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._batches: dict[str, _Histogram] = {}
        self._loads: dict[str, int] = {}
        self._versions: dict[str, int] = {}

    def request(self, model: str, signature: str, api: str, status: str, seconds: float) -> None:
        """Counts one request and records its latency."""
        with self._lock:
            key = _labels(model=model, signature=signature, api=api, status=status)
            self._requests[key] = self._requests.get(key, 0) + 1
            key = _labels(model=model, signature=signature, api=api)
            self._latency.setdefault(key, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, model: str, rows: int) -> None:
        """Records the row count of one TensorFlow call."""
        with self._lock:
            self._batches.setdefault(_labels(model=model), _Histogram(BATCH_BUCKETS)).observe(rows)

    def load(self, model: str, result: str, version: int | None = None) -> None:
        """Counts a model load ("ok" / "error"); a successful one sets the served version."""
        with self._lock:
            key = _labels(model=model, result=result)
            self._loads[key] = self._loads.get(key, 0) + 1
            if version is not None:
                self._versions[_labels(model=model)] = version

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            out = ["# TYPE tfrec_serving_requests_total counter"]
            out += [f"tfrec_serving_requests_total{{{k}}} {v}" for k, v in self._requests.items()]
            out.append("# TYPE tfrec_serving_request_latency_seconds histogram")
            for k, h in self._latency.items():
                out += h.lines("tfrec_serving_request_latency_seconds", k)
            out.append("# TYPE tfrec_serving_batch_size histogram")
            for k, h in self._batches.items():
                out += h.lines("tfrec_serving_batch_size", k)
            out.append("# TYPE tfrec_serving_model_loads_total counter")
            out += [f"tfrec_serving_model_loads_total{{{k}}} {v}" for k, v in self._loads.items()]
            out.append("# TYPE tfrec_serving_model_version gauge")
            out += [f"tfrec_serving_model_version{{{k}}} {v}" for k, v in self._versions.items()]
        return "\n".join(out) + "\n"
