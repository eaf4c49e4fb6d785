"""A run's output files on the local disk or on any ``tf.io.gfile`` scheme (``gs://``, ``ram://``, ...).

A local path keeps plain file I/O: ``pathlib`` objects, renames that are atomic
on one disk, ``fsync`` where a crash must not lose a file. A URL (anything with
``://``) goes through ``tf.io.gfile``; pathlib would turn ``gs://b/x`` into a
local folder named ``gs:``. Object stores rename nothing in place: a file rename
is a copy and a delete, and a folder cannot be renamed at all (``ram://`` refuses
it). So on a URL a file is written under a temporary name and renamed over its
target, and a folder that must appear whole is copied file by file with the file
that marks it complete (``saved_model.pb``, ``best.json``) last.

Every function takes a ``str`` or a ``Path``; :func:`location` and :func:`join`
return a ``Path`` for a local path and a ``str`` for a URL.
"""

from __future__ import annotations

import glob as glob_lib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Union

Location = Union[str, Path]


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``tf.io.gfile`` scheme (``gs://b/x``, ``ram://x``) rather than a local file."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # heavy: only URLs need it, and this module must stay light for the CLIs and the config

    return tf.io.gfile


def location(path: str | os.PathLike) -> Location:
    """``path`` as a ``Path`` when local, as a ``str`` without trailing ``/`` when a URL."""
    return str(path).rstrip("/") if is_url(path) else Path(path)


def join(base: str | os.PathLike, *names: str) -> Location:
    """``base/name/...``: a ``Path`` when local, a ``str`` that keeps the URL's ``//`` otherwise."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base, *names)


def relative(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` relative to the folder ``base`` (``os.path.relpath``; on a URL, its prefix removed)."""
    if is_url(base):
        prefix = str(base).rstrip("/") + "/"
        return str(path)[len(prefix):] if str(path).startswith(prefix) else str(path)
    return os.path.relpath(path, base)


def exists(path: str | os.PathLike) -> bool:
    return _gfile().exists(str(path)) if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    return _gfile().isdir(str(path)) if is_url(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    if is_url(path):
        return _gfile().exists(str(path)) and not _gfile().isdir(str(path))
    return os.path.isfile(path)


def makedirs(path: str | os.PathLike) -> None:
    """Creates ``path`` and its parents; an existing folder is fine (a local file in the way raises OSError)."""
    if is_url(path):
        _gfile().makedirs(str(path))
    else:
        Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """The names in folder ``path`` (no trailing ``/``, which Cloud Storage puts on folders)."""
    if is_url(path):
        return [name.rstrip("/") for name in _gfile().listdir(str(path))]
    return os.listdir(path)


def glob(pattern: str) -> list[str]:
    """The files matching ``pattern`` (``*``, ``?``, ``[...]``), sorted; through ``tf.io.gfile`` on a URL."""
    return sorted(_gfile().glob(pattern) if is_url(pattern) else glob_lib.glob(pattern))


def read_bytes(path: str | os.PathLike) -> bytes:
    if is_url(path):
        with _gfile().GFile(str(path), "rb") as f:
            return f.read()
    return Path(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def _open_new(path: str | os.PathLike, mode: str):
    """``GFile(path, mode)`` on an empty file: TensorFlow's ``ram://`` file system appends to an existing file
    opened with ``"w"`` instead of truncating it, so an old one is deleted first."""
    gfile = _gfile()
    if gfile.exists(str(path)):
        gfile.remove(str(path))
    return gfile.GFile(str(path), mode)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` (not atomically; see :func:`write_atomic`)."""
    if is_url(path):
        with _open_new(path, "w") as f:
            f.write(text)
    else:
        Path(path).write_text(text)


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w",
                 fsync: bool = False) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it to ``path``.

    A reader finds the old file or the whole new one, never a half-written one.
    ``fsync`` (local only) also flushes the data to the disk before the rename, so
    a machine crash cannot leave the new name pointing at an empty file. On a
    URL the rename is the store's (a copy on Cloud Storage, whose objects appear
    whole when closed anyway).

    Args:
      path: the file to (re)place; its folder is created if missing.
      write: writes the content to the open file object.
      mode: ``"w"`` (text, utf-8) or ``"wb"``.
      fsync: flush to disk before the rename (local files).
    """
    target = str(path)
    head, _, name = target.rstrip("/").rpartition("/")
    tmp = f"{head}/.{name}.tmp-{os.getpid()}" if head else f".{name}.tmp-{os.getpid()}"
    makedirs(head or ".")
    if is_url(path):
        gfile = _gfile()
        try:
            with _open_new(tmp, mode) as f:
                write(f)
            gfile.rename(tmp, target, overwrite=True)
        except BaseException:
            remove(tmp)
            raise
        return
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        remove(tmp)
        raise


def remove(path: str | os.PathLike) -> None:
    """Deletes the file ``path`` if it is there."""
    try:
        if is_url(path):
            _gfile().remove(str(path))
        else:
            os.unlink(path)
    except (OSError, _errors().NotFoundError):
        pass


def rmtree(path: str | os.PathLike) -> None:
    """Deletes the folder ``path`` and everything in it, if it is there."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        if _gfile().exists(str(path)):
            _gfile().rmtree(str(path))
    except _errors().NotFoundError:
        pass


def copy_tree(source: str | os.PathLike, target: str | os.PathLike, last: str | None = None) -> None:
    """Copies every file under ``source`` to the same place under ``target`` (any schemes, either way).

    ``last``: the name of a file at the top of ``source`` that marks the folder complete
    (``saved_model.pb``); it is copied after everything else, so a reader that waits for
    it never sees a folder with files missing.
    """
    gfile = _gfile()
    src, dst = str(source).rstrip("/"), str(target).rstrip("/")
    files = [(f"{top.rstrip('/')}/{name}", f"{dst}{top.rstrip('/')[len(src):]}/{name}")
             for top, _, names in gfile.walk(src) for name in names]
    files.sort(key=lambda pair: last is not None and pair[0] == f"{src}/{last}")
    gfile.makedirs(dst)
    for source_file, target_file in files:
        gfile.makedirs(target_file.rsplit("/", 1)[0])
        gfile.copy(source_file, target_file, overwrite=True)


def _errors():
    import tensorflow as tf  # heavy: see _gfile

    return tf.errors
