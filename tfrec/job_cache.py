"""What a rerun of the same command takes from the job dir instead of computing it again.

    JOB_DIR/cache/encodings/<role>-<key>.npy    a frozen encoder's outputs, float32 [distinct texts, hidden]
    JOB_DIR/cache/baselines/<name>-<key>.json   a finished baseline's metrics

The key hashes everything the result depends on (the encoder's config and
seed and the exact texts; the data config, counts and the baseline's budget),
so a changed config or data set computes afresh instead of reusing a stale
result. Files are written under a temporary name and renamed, so a run killed
mid-write leaves nothing half-written behind; a file that cannot be read is
computed again. The job dir may be a ``tf.io.gfile`` URL (:mod:`tfrec.fileio`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Any, Callable

import numpy as np

from tfrec import fileio

log = logging.getLogger("tfrec")


def digest(identity: Any, texts: list[str] | None = None) -> str:
    """A short hex key of a JSON-able ``identity`` (and, if given, every text in order)."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    if texts is not None:
        h.update(len(texts).to_bytes(8, "little"))
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()[:16]


class JobCache:
    """Encodings and baseline results kept under ``job_dir/cache`` (see the module docstring).

    Args:
      job_dir: the run's folder.
      enabled: False computes everything and keeps nothing (e.g. a non-chief worker).
    """

    def __init__(self, job_dir: str | os.PathLike, enabled: bool = True):
        self.root = fileio.join(job_dir, "cache")
        self.enabled = enabled

    def encoder(self, role: str, encode: Callable[..., np.ndarray], identity: Any) -> Callable[..., np.ndarray]:
        """``encode`` (list[str] -> float32 [n, hidden]) that reuses an earlier run's outputs for the same texts.

        Args:
          role: ``"query"`` or ``"item"`` (the file name and the log line).
          encode: the frozen encoder's ``encode_texts``.
          identity: what makes the encoder's outputs what they are (its config and seed).
        """

        def cached_encode(texts: list[str], progress: str | None = None) -> np.ndarray:
            path = fileio.join(self.root, "encodings", f"{role}-{digest(identity, texts)}.npy")
            if self.enabled and texts and fileio.isfile(path):
                try:
                    matrix = np.load(io.BytesIO(fileio.read_bytes(path)) if fileio.is_url(path) else path)
                except (OSError, ValueError):
                    matrix = None  # unreadable: encode again
                # The encoder still runs on one text: Keras creates its weights on the first call, and the
                # checkpoint restore and the towers need them; its width also checks the file.
                if matrix is not None and matrix.shape[0] == len(texts) and matrix.shape[1:] == encode(
                        texts[:1]).shape[1:]:
                    log.info("cache: reused %d %s encodings from %s", len(texts), role, path)
                    return matrix
            matrix = encode(texts, progress=progress) if progress else encode(texts)
            if self.enabled:
                fileio.write_atomic(path, lambda f: np.save(f, matrix), "wb")
            return matrix

        return cached_encode

    def baseline(self, name: str, identity: Any, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """A baseline's metrics: from an earlier run with the same ``identity``, else ``compute()`` (kept).

        Returns:
          (metrics, reused).
        """
        path = fileio.join(self.root, "baselines", f"{name}-{digest(identity)}.json")
        if self.enabled and fileio.isfile(path):
            try:
                return json.loads(fileio.read_text(path)), True
            except (OSError, ValueError):
                pass
        metrics = compute()
        if self.enabled:
            fileio.write_atomic(path, lambda f: f.write(json.dumps(metrics, indent=2)))
        return metrics, False


def encode(cache: JobCache | None, role: str, encoder) -> Callable[..., np.ndarray]:
    """``encoder.encode_texts``, kept in ``cache`` (keyed by ``encoder.get_config()``); itself when None."""
    if cache is None:
        return encoder.encode_texts
    return cache.encoder(role, encoder.encode_texts, encoder.get_config())
