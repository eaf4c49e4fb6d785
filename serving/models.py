"""The models a server serves: loading versions, retrying failed loads, version status.

``ModelRegistry`` maps model names to their base folders (``EXPORT/<name>/<version>``)
and serves the newest integer version of each. ``poll_once`` loads a newer version
completely and only then swaps it in; a version that fails to load is retried on later
polls with back-off (``load_retry_interval_s * 2**(attempt - 1)``, at most
``max_load_retries`` retries, as TF Serving's ``--max_num_load_retries`` and
``--load_retry_interval_micros``), and at once whenever its files change (a copy still
arriving). The served version is never dropped for a broken newer one, and ``status``
reports every failure with its error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from tfrec.api import register_ops
from tfrec.export import layout
from serving.batching import Batcher
from serving.signatures import RequestError, Signature, one_line

log = logging.getLogger("serving.server")  # the server's one log stream
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ServedModel:
    """One loaded version of one model: its signatures, metadata and batchers.

    Args:
      batcher_args: keyword arguments of every ``Batcher``; None serves without batching.
    """

    def __init__(self, name: str, version: int, path: Path, batcher_args: dict[str, Any] | None):
        self.name, self.version, self.path = name, version, path
        pb = (path / "saved_model.pb").read_bytes()
        register_ops(scann=name.endswith("_scann") or b"Scann>" in pb)
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in saved_model_pb2.SavedModel.FromString(pb).meta_graphs[0].signature_def.items():
            self.signature_defs.signature_def[key].CopyFrom(sig)
        self.metadata_json = json_format.MessageToDict(
            self.signature_defs, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)
        self.loaded = tf.saved_model.load(str(path))
        self.exclude_history = _exclude_history(path, self.signature_defs)
        self.signatures = {
            k: Signature(k, fn, {n: tf.make_ndarray(t) for n, t in
                                 self.signature_defs.signature_def[k].defaults.items()})
            for k, fn in self.loaded.signatures.items()}
        self.batchers = {k: Batcher(s, paddable=s.paddable, **batcher_args)
                         for k, s in self.signatures.items()
                         if s.batchable and batcher_args is not None}
        for sig in self.signatures.values():  # first calls trace/initialise: do them now
            try:
                sig(sig.complete({n: _dummy(sig.inputs[n]) for n in sig.required})[0])
            except Exception as e:  # noqa: BLE001 - dummy inputs may be meaningless
                log.debug("warm-up of %s/%s skipped: %s", name, sig.name, one_line(e))


def _exclude_history(path: Path, signature_defs) -> bool | None:
    """The export's ``export.exclude_history`` (its ``assets.extra/export_report.json``): whether retrieve
    leaves the request's ``history_item_ids`` out; None without a history input or a tfrec report."""
    report = path / "assets.extra" / "export_report.json"
    history = any("history_item_ids" in sig.inputs for sig in signature_defs.signature_def.values())
    if not history or not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("exclude_history")
    except ValueError:  # a report that is not JSON says nothing; the model itself still serves
        return None


def _dummy(spec: tf.TensorSpec) -> np.ndarray:
    """One row of "" / 0 with every unknown dimension 0 (for warm-up calls)."""
    shape = [1] + [0 if d is None else d for d in spec.shape.as_list()[1:]]
    if spec.dtype == tf.string:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, spec.dtype.as_numpy_dtype)


@dataclass
class LoadFailure:
    """A version that failed to load: when to try again, and why it failed."""
    stamp: tuple
    attempts: int  # every attempt on this version
    tries: int  # attempts since its files last changed (what the retry budget counts)
    error: str
    retry_at: float  # time.monotonic(); inf once the retries are used up


@dataclass(frozen=True)
class VersionStatus:
    """One row of the model status API (TF Serving's ModelVersionStatus)."""
    version: int
    state: str  # AVAILABLE, LOADING (failed, will retry) or END (failed for good)
    error_code: str = "OK"
    error_message: str = ""


def folder_stamp(path: Path) -> tuple:
    """(files, bytes, newest mtime) of a version folder: changes while a copy is still arriving."""
    files = size = newest = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                st = os.stat(os.path.join(root, n))
            except OSError:
                continue
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


class ModelRegistry:
    """The served version of each model, loaded from its base path; see the module docstring.

    Args:
      base_paths: ``{model_name: model_base_path}``.
      batcher_args: keyword arguments of each signature's ``Batcher`` (None: no batching);
        ``arriving`` and ``on_batch`` are added per model from ``batcher_hooks(name)``.
      on_load: ``(model, result, version)`` after every load attempt (for metrics).
      max_load_retries / load_retry_interval_s: see the module docstring.
    """

    def __init__(self, base_paths: dict[str, str], batcher_args: dict[str, Any] | None,
                 batcher_hooks: Callable[[str], dict[str, Any]] = lambda name: {},
                 on_load: Callable[[str, str, int | None], None] = lambda *a: None,
                 max_load_retries: int = 5, load_retry_interval_s: float = 60.0):
        for name in base_paths:
            if not NAME_RE.match(name):
                raise ValueError(f"model name {name!r}: letters, digits, '-' and '_' only")
        self.base_paths = dict(base_paths)
        self._batcher_args, self._batcher_hooks, self._on_load = batcher_args, batcher_hooks, on_load
        self.max_load_retries, self.load_retry_interval_s = max_load_retries, load_retry_interval_s
        self.models: dict[str, ServedModel] = {}
        self._failed: dict[str, dict[int, LoadFailure]] = {n: {} for n in base_paths}
        self._lock = threading.Lock()  # one poll at a time (the poll thread, reload_config, tests)

    def replace_base_paths(self, wanted: dict[str, str], source: str) -> None:
        """Serves the models of ``wanted``: added ones load on the next poll, removed ones stop."""
        if wanted == self.base_paths:
            return
        for name in sorted(set(self.base_paths) - set(wanted)):
            self.models.pop(name, None)
            log.info("model %s: no longer in %s; not served any more", name, source)
        for name, base in sorted(wanted.items()):
            if name in self.base_paths and self.base_paths[name] != base:
                self.models.pop(name, None)  # a new base path: its newest version loads afresh
                self._failed[name] = {}
            if self.base_paths.get(name) != base:
                log.info("model %s: %s %s (from %s)", name, "serving" if name not in self.base_paths else
                         "base path now", base, source)
            self._failed.setdefault(name, {})
        self.base_paths = dict(wanted)  # replaced, never mutated: request threads read it

    def poll_once(self) -> None:
        """Loads any model whose newest version differs from the one being served."""
        with self._lock:
            for name, base in self.base_paths.items():
                try:
                    self._maybe_load(name, Path(base))
                except Exception as e:  # noqa: BLE001 - the poller must survive anything
                    log.error("model %s: polling %s failed: %s", name, base, one_line(e))

    def _maybe_load(self, name: str, base: Path) -> None:
        latest = layout.latest_version(base)
        current = self.models.get(name)
        if latest is None or (current and current.version == latest):
            return
        path = base / str(latest)
        stamp = folder_stamp(path)
        failed = self._failed[name].get(latest)
        if failed and failed.stamp == stamp and time.monotonic() < failed.retry_at:
            return  # neither changed nor due for a retry
        attempt = failed.attempts + 1 if failed else 1
        tries = failed.tries + 1 if failed and failed.stamp == stamp else 1
        start = time.perf_counter()
        args = None if self._batcher_args is None else dict(self._batcher_args, **self._batcher_hooks(name))
        try:
            model = ServedModel(name, latest, path, args)
        except Exception as e:  # noqa: BLE001
            self._on_load(name, "error", None)
            retries_left = self.max_load_retries - (tries - 1)
            delay = self.load_retry_interval_s * 2 ** (tries - 1)
            self._failed[name][latest] = LoadFailure(
                stamp, attempt, tries, one_line(e), time.monotonic() + delay if retries_left > 0 else float("inf"))
            log.error("model %s version %d failed to load from %s (attempt %d; %s; %s): %s", name, latest, path,
                      attempt, f"retrying in {delay:g}s or when its files change" if retries_left > 0
                      else "no retries left until its files change",
                      f"still serving version {current.version}" if current else "nothing served", one_line(e))
            return
        self._failed[name].pop(latest, None)
        self.models[name] = model  # the swap: later requests see the new version
        self._on_load(name, "ok", latest)
        history = {True: "; retrieve leaves each request's history_item_ids out of its results "
                         "(export.exclude_history)", False: "; retrieve may return the request's history_item_ids "
                         "(export.exclude_history is off)"}.get(model.exclude_history, "")
        log.info("model %s version %d loaded from %s in %.2fs (%s)%s", name, latest, path,
                 time.perf_counter() - start,
                 f"swapped from version {current.version}" if current else "first version", history)

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """The served model; RequestError NOT_FOUND (or INVALID_ARGUMENT for a bad name)."""
        if not NAME_RE.match(name):
            raise RequestError(f"invalid model name {name[:100]!r}: letters, digits, '-' and '_'")
        model = self.models.get(name)
        if model is None or (version is not None and version != model.version):
            which = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise RequestError(f"Servable not found for request: {which}", "NOT_FOUND")
        return model

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """The served version first, then versions that failed to load (newest first).

        RequestError NOT_FOUND when the model (or that version) is neither served nor failed.
        """
        if not NAME_RE.match(name):
            raise RequestError(f"invalid model name {name[:100]!r}: letters, digits, '-' and '_'")
        rows = []
        if (served := self.models.get(name)) is not None:
            rows.append(VersionStatus(served.version, "AVAILABLE"))
        for v, f in sorted(self._failed.get(name, {}).items(), reverse=True):
            if served is None or v > served.version:
                retry = ("will retry when its files change" if f.retry_at == float("inf") else
                         f"retry in {max(0.0, f.retry_at - time.monotonic()):.1f}s")
                rows.append(VersionStatus(v, "END" if f.retry_at == float("inf") else "LOADING", "UNKNOWN",
                                          f"load attempt {f.attempts} failed ({retry}): {f.error}"))
        if version is not None:
            rows = [r for r in rows if r.version == version]
        if not rows:
            raise RequestError(f"Could not find version {version} of model {name}" if version is not None
                               else f"Could not find any versions of model {name}", "NOT_FOUND")
        return rows
