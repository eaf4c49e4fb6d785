"""The on-disk layout TF Serving reads, written atomically.

An export folder looks like this::

    EXPORT/
      models.config                  text-format ModelServerConfig (model_config_list)
      batching_parameters.txt        text-format TF Serving BatchingParameters
      <model_name>/<version>/        one SavedModel per integer version
        saved_model.pb  variables/  assets.extra/
      <model_name>_scann/<version>/

TF Serving (and ``serving.server``) serve the highest integer folder and ignore
any other name, so a version is published by writing it into a hidden temporary
folder inside the model's base path and renaming it to its number: a server
never sees a half-written version.

The export folder may be a ``tf.io.gfile`` URL (``gs://``, ``ram://``). An object
store cannot rename a folder, so there the version is written into a local
temporary folder and copied to its number file by file, ``saved_model.pb``
last: a loader finds no SavedModel until every other file is in place. (A
publish killed mid-copy leaves a numbered folder without ``saved_model.pb``,
which no loader accepts; the next publish takes the number after it.)

Usage::

    from tfrec.export import layout
    path = layout.publish_version(base, lambda d: tf.saved_model.save(module, d))
    layout.write_models_config(export_root, ["tfrec", "tfrec_scann"])
    layout.write_batching_parameters(export_root, max_batch_size=64)
    layout.read_models_config(export_root / "models.config")  # {"tfrec": "/abs/..."}

``models.config`` names each model relative to its own folder, so the export
moves as a whole; for the ``tensorflow/serving`` container, which resolves paths
against its working directory, write one with the mount point as prefix:
``python -m tfrec.export.layout JOB_DIR/export --base_path /models``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrec import fileio

log = logging.getLogger(__name__)

MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)$")
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# A leading '-' would read as a flag on TF Serving's command line (--model_name=-x) and in docker -e.
MODEL_NAME_RULE = "a letter or digit, then letters, digits, '-' and '_'"


def _versions(model_base_path: str | os.PathLike) -> list[int]:
    if not fileio.isdir(model_base_path):
        return []
    return [int(name) for name in fileio.listdir(model_base_path)
            if name.isascii() and name.isdigit() and fileio.isdir(fileio.join(model_base_path, name))]


def latest_version(model_base_path: str | os.PathLike) -> int | None:
    """The highest integer version folder under ``model_base_path``, or None."""
    versions = _versions(model_base_path)
    return max(versions) if versions else None


def next_version(model_base_path: str | os.PathLike) -> int:
    """The version a new export should get: the highest existing one + 1, or 1.

    Temporary folders (``.tmp-<version>-<pid>``) are ignored, so versions only
    increase even when an earlier publish was killed.
    """
    latest = latest_version(model_base_path)
    return 1 if latest is None else latest + 1


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(base: Path) -> None:
    """Deletes temp folders whose writing process is gone (killed publishes)."""
    for entry in base.iterdir():
        match = _TMP_RE.match(entry.name)
        if match and not _pid_alive(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed stale temporary export %s", entry)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_version(model_base_path: str | os.PathLike,
                    write_fn: Callable[[str], None],
                    version: int | None = None) -> fileio.Location:
    """Writes a new version atomically and returns its folder.

    Args:
      model_base_path: the model's folder (``EXPORT/<model_name>``); created if missing.
      write_fn: called with the path (str) of an empty temporary folder inside
        ``model_base_path`` (a local one when that is a URL); writes the SavedModel there (e.g.
        ``lambda d: tf.saved_model.save(module, d)``).
      version: the version number; default ``next_version(model_base_path)``.
        Must be higher than every existing version.

    Returns:
      ``model_base_path/<version>``, visible only once completely written (a
      ``Path``; a ``str`` for a URL, where ``write_fn`` gets a local folder).

    Raises:
      ValueError: ``version`` is not higher than the latest existing version.
      Whatever ``write_fn`` raises; then the temporary folder is removed and no
      version becomes visible.
    """
    if fileio.is_url(model_base_path):
        return _publish_by_copy(str(model_base_path).rstrip("/"), write_fn, version)
    base = Path(model_base_path).absolute()
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(base)
    version = _checked_version(base, version)
    tmp = base / f"{TMP_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_fn(str(tmp))
        _fsync_tree(tmp)
        final = base / str(version)
        if final.exists():  # another publisher won the race for this number
            raise FileExistsError(f"{final} already exists")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(base)
    log.info("published %s", final)
    return final


def _checked_version(base: fileio.Location, version: int | None) -> int:
    """``version``, or the next one when None; refuses one not above the latest existing version."""
    latest = latest_version(base)
    if version is None:
        return 1 if latest is None else latest + 1
    if version < 1 or (latest is not None and version <= latest):
        raise ValueError(f"{base}: version {version} must be >= 1 and higher than "
                         f"the latest existing version {latest}")
    return version


def _publish_by_copy(base: str, write_fn: Callable[[str], None], version: int | None) -> str:
    """:func:`publish_version` on a URL: written locally, then copied with ``saved_model.pb`` last."""
    fileio.makedirs(base)
    version = _checked_version(base, version)
    final = f"{base}/{version}"
    if fileio.exists(final):
        raise FileExistsError(f"{final} already exists")
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{version}-") as tmp:
        write_fn(tmp)
        try:
            fileio.copy_tree(tmp, final, last="saved_model.pb")
        except BaseException:
            fileio.rmtree(final)
            raise
    log.info("published %s", final)
    return final


def copy_version_to_top(version_dir: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """Copies a published SavedModel's files to the top of ``model_dir`` (any ``tf.io.gfile`` scheme).

    Vertex AI loads ``AIP_MODEL_DIR/saved_model.pb``, not a numbered version, so
    the serving model is placed there too (the numbered copy stays for TF Serving).
    ``saved_model.pb`` is copied last: a reader never finds it before its variables.
    """
    fileio.copy_tree(version_dir, model_dir, last="saved_model.pb")
    log.info("export: %s also at the top of %s (Vertex AI loads it there)", str(version_dir).rstrip("/"),
             str(model_dir).rstrip("/"))


def valid_model_name(name: str) -> bool:
    """Whether ``name`` may name a served model (a folder of versions, a ``models.config`` entry):
    :data:`MODEL_NAME_RULE`. The config's ``export.model_name`` is checked by this same rule."""
    return _MODEL_NAME_RE.fullmatch(name) is not None


def _check_model_name(name: str) -> None:
    if not valid_model_name(name):
        raise ValueError(f"model name {name!r}: {MODEL_NAME_RULE}")


def write_models_config(export_root: str | os.PathLike, model_names: list[str], base_path: str | None = None,
                        output: str | os.PathLike | None = None) -> fileio.Location:
    """Writes a ``models.config`` listing each model's folder, so the export folder can move.

    Args:
      export_root: the export folder.
      model_names: e.g. ``["tfrec", "tfrec_scann"]``; letters, digits, '-', '_'.
      base_path: where a server will see ``export_root`` (``/models`` when it is
        mounted there in the ``tensorflow/serving`` container): entries become
        ``<base_path>/<name>``. None: entries are ``<name>``, relative to the
        config file's folder (``serving.server`` reads them so; TF Serving
        resolves them against its working directory).
      output: the file to write (default ``export_root/models.config``).

    Returns:
      The path of the text-format ``ModelServerConfig`` (``model_platform:
      "tensorflow"``), usable as TF Serving's ``--model_config_file``.
    """
    root = fileio.location(export_root)
    root = root if isinstance(root, str) else root.absolute()
    config = model_server_config_pb2.ModelServerConfig()
    for name in model_names:
        _check_model_name(name)
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{base_path.rstrip('/')}/{name}" if base_path else name
        entry.model_platform = "tensorflow"
    fileio.makedirs(root)
    path = fileio.location(output) if output else fileio.join(root, MODELS_CONFIG)
    _write_atomic(path, text_format.MessageToString(config))
    return path


def model_names(export_root: str | os.PathLike) -> list[str]:
    """The model folders of an export (those holding at least one integer version), sorted."""
    return sorted(name for name in fileio.listdir(export_root)
                  if not name.startswith(".") and latest_version(fileio.join(export_root, name)) is not None)


def read_models_config(path: str | os.PathLike) -> dict[str, str]:
    """Reads a text-format ModelServerConfig: ``{model_name: absolute base_path}``.

    Relative base paths are taken relative to the config file's folder.
    """
    path = fileio.location(path)
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(fileio.read_text(path), config)
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a text-format ModelServerConfig: {e}") from None
    models: dict[str, str] = {}
    for entry in config.model_config_list.config:
        _check_model_name(entry.name)
        if isinstance(path, str):  # a URL: relative to its folder, absolute when it is a URL or /path itself
            absolute = fileio.is_url(entry.base_path) or entry.base_path.startswith("/")
            models[entry.name] = entry.base_path if absolute else f"{path.rsplit('/', 1)[0]}/{entry.base_path}"
            continue
        base = Path(entry.base_path)
        models[entry.name] = str(base if base.is_absolute() else (path.parent / base).absolute())
    return models


def write_batching_parameters(export_root: str | os.PathLike, max_batch_size: int = 64,
                              batch_timeout_micros: int = 2000, max_enqueued_batches: int = 100,
                              num_batch_threads: int = 2,
                              pad_variable_length_inputs: bool = True) -> fileio.Location:
    """Writes ``export_root/batching_parameters.txt`` for ``--batching_parameters_file``.

    The fields are TF Serving's ``BatchingParameters``; ``pad_variable_length_inputs``
    lets requests whose ``exclude_item_ids`` widths differ share a batch.
    """
    if max_batch_size < 1 or batch_timeout_micros < 0:
        raise ValueError("max_batch_size must be >= 1 and batch_timeout_micros >= 0")
    text = (f"max_batch_size {{ value: {max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
            f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
            f"num_batch_threads {{ value: {num_batch_threads} }}\n"
            f"pad_variable_length_inputs: {'true' if pad_variable_length_inputs else 'false'}\n")
    fileio.makedirs(export_root)
    path = fileio.join(export_root, BATCHING_PARAMETERS)
    _write_atomic(path, text)
    return path


def read_batching_parameters(path: str | os.PathLike) -> dict[str, int | bool]:
    """Reads the wrapped-int fields (and ``pad_variable_length_inputs``) of a batching file."""
    params: dict[str, int | bool] = {}
    text = fileio.read_text(path)
    for name, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}", text):
        params[name] = int(value)
    pad = re.search(r"pad_variable_length_inputs\s*:\s*(true|false)", text)
    if pad:
        params["pad_variable_length_inputs"] = pad.group(1) == "true"
    return params


def _write_atomic(path: fileio.Location, text: str) -> None:
    fileio.write_atomic(path, lambda f: f.write(text), fsync=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m tfrec.export.layout EXPORT_DIR [--base_path /models] [--output FILE]``: rewrites models.config."""
    parser = argparse.ArgumentParser(prog="python -m tfrec.export.layout", description=main.__doc__)
    parser.add_argument("export_dir", help="a run's export folder (JOB_DIR/export)")
    parser.add_argument("--base_path", help="where a server sees EXPORT_DIR, e.g. /models in tensorflow/serving; "
                        "default: paths relative to the config file")
    parser.add_argument("--output", help="file to write (default EXPORT_DIR/models.config)")
    args = parser.parse_args(argv)
    names = model_names(args.export_dir) if fileio.isdir(args.export_dir) else []
    if not names:
        print(f"error: {args.export_dir}: no model folder with a version in it", file=sys.stderr)
        return 2
    path = write_models_config(args.export_dir, names, args.base_path, args.output)
    print(f"{path}: {', '.join(names)}" + (f" under {args.base_path}" if args.base_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
