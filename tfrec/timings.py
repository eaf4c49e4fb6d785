"""Where a run's time and memory went: wall time and peak RSS per named stage.

Stages are ``read``, ``build``, ``encode``, ``train`` (one call per epoch),
``validation`` (one call per epoch, inside ``train``), ``evaluate``,
``baseline:<name>``, ``index`` and ``export`` (the index's time inside it). A
stage entered twice adds up its seconds and counts its calls. Written as
``timings.json`` beside ``eval.json``::

    {"stages": {"read": {"seconds": 12.1, "calls": 1, "peak_rss_mb": 812.0, "examples": 1000000}, ...},
     "total_seconds": 230.4, "peak_rss_mb": 2210.0}

Peak RSS per stage: on Linux the kernel's high-water mark (``VmHWM``) is reset
when a stage starts (``/proc/self/clear_refs``) and read when it ends, so each
stage reports its own peak; elsewhere every stage reports the process peak so far.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager, nullcontext


# Stages timed inside another (their seconds are part of it): name -> the stage around it.
NESTED = {"validation": "train", "index": "export"}


def _read_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _process_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class StageTimes:
    """Collects per-stage wall time and peak RSS for one run (see the module docstring)."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.started = time.time()
        self._open: list[str] = []
        self._peak_mb = 0.0

    def _fold_peak(self) -> None:
        """Charges the high-water mark so far to every open stage (before a reset loses it)."""
        hwm = _read_hwm_mb()
        peak = hwm if hwm is not None else _process_peak_mb()
        self._peak_mb = max(self._peak_mb, peak)
        for name in self._open:
            self.stages[name]["peak_rss_mb"] = max(self.stages[name]["peak_rss_mb"], round(peak, 1))

    @contextmanager
    def stage(self, name: str, examples: int | None = None):
        """Times the body as stage ``name``; ``examples`` (how many it processed) gives examples/s."""
        entry = self.stages.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_rss_mb": 0.0})
        self._fold_peak()
        self._open.append(name)
        _reset_hwm()
        start = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 3)
            entry["calls"] += 1
            if examples is not None:
                entry["examples"] = entry.get("examples", 0) + int(examples)
            self._fold_peak()
            self._open.remove(name)

    def epoch_callback(self, name: str = "train", examples_per_epoch: int | None = None):
        """A Keras callback timing each epoch (its end-of-epoch validation included) as one call of ``name``."""
        import tensorflow as tf  # heavy: only a Keras run needs it; the timings stay TensorFlow-free

        times = self

        class EpochTimes(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.stage = times.stage(name, examples_per_epoch)
                self.stage.__enter__()

            def on_epoch_end(self, epoch, logs=None):
                self.stage.__exit__(None, None, None)

        return EpochTimes()

    def record(self, name: str, seconds: float, note: str | None = None) -> None:
        """Adds a stage measured elsewhere (e.g. reused from a cache: ``note="cached"``)."""
        entry = self.stages.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_rss_mb": 0.0})
        entry["seconds"] = round(entry["seconds"] + seconds, 3)
        entry["calls"] += 1
        if note:
            entry["note"] = note

    def to_dict(self) -> dict:
        self._fold_peak()
        return {"stages": self.stages, "total_seconds": round(time.time() - self.started, 3),
                "peak_rss_mb": round(max(self._peak_mb, _process_peak_mb()), 1)}

    def summary(self) -> str:
        """One line: each top-level stage's share of the run, largest first, and the peak RSS."""
        report = self.to_dict()
        total = max(report["total_seconds"], 1e-9)
        parts = sorted(((v["seconds"], k) for k, v in self.stages.items() if k not in NESTED), reverse=True)
        inner = {outer: (name, self.stages[name]["seconds"]) for name, outer in NESTED.items() if name in self.stages}

        def share(seconds: float, name: str) -> str:
            text = f"{name} {100 * seconds / total:.0f}% ({seconds:.0f}s"
            if name in inner and inner[name][1] >= 0.5:
                text += f", {inner[name][0]} {inner[name][1]:.0f}s of it"
            return text + ")"

        shares = ", ".join(share(s, k) for s, k in parts if s >= 0.5)
        return f"time: {shares or 'nothing timed'} of {total:.0f}s; peak RSS {report['peak_rss_mb']:.0f} MB"


def stage(times: StageTimes | None, name: str, examples: int | None = None):
    """``times.stage(name, examples)``; a context that records nothing when ``times`` is None (a stage
    called by hand, outside :func:`tfrec.fit`)."""
    return times.stage(name, examples) if times is not None else nullcontext()
