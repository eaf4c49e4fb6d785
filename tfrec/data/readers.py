"""Readers: one table per file set, with row numbers kept for error messages.

Formats: ``csv``, ``tsv``, ``jsonl``, ``tfrecord`` (``tf.train.Example``),
``recbole`` (RecBole atomic files: tab-separated, headers like
``user_id:token`` whose ``:type`` suffix is dropped). ``auto`` picks by file
extension. A path may be a glob naming shards, ``pkg://PACKAGE/rel/path``
(a file inside an installed Python package) or ``synthetic://NAME/file``
(generated on demand, see :mod:`tfrec.data.synthetic`). Any other URL
(``gs://``, ``ram://``, ``s3://``...) is read through ``tf.io.gfile``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tfrec import fileio
from tfrec.data import synthetic
from tfrec.errors import DataError

log = logging.getLogger("tfrec")

EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
    ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".inter": "recbole", ".item": "recbole",
    ".user": "recbole",
}
csv.field_size_limit(16 * 1024 * 1024)


@dataclass
class Table:
    """Columns read from one or more files.

    Attributes:
      path: what the user named (shown in errors).
      columns: column name -> list of values, all of length ``num_rows``
        (strings from csv/tsv; str/int/float/None from jsonl and TFRecord).
      sources: per row, ``(file, row)`` with 1-based data row numbers.
      skipped_rows: unreadable rows skipped under ``max_error_rows``.
    """

    path: str
    columns: dict[str, list[Any]]
    sources: list[tuple[str, int]]
    skipped_rows: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.sources)

    def error(self, i: int, column: str | None, message: str) -> DataError:
        """A DataError pointing at row ``i`` of this table."""
        file, row = self.sources[i]
        return DataError(file, message, row=row, column=column)


def resolve_path(path: str, base_dir: str | None = None) -> list[str]:
    """Expands pkg://, synthetic:// and globs into a sorted list of files."""
    if path.startswith("pkg://"):
        package, _, rel = path[len("pkg://"):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(path, f"package '{package}' is not installed (run `make install`)")
        return [str(Path(list(spec.submodule_search_locations)[0]) / rel)]
    if path.startswith("synthetic://"):
        return [synthetic.materialize(path, base_dir)]
    if any(ch in path for ch in "*?["):
        files = fileio.glob(path)
        if not files:
            raise DataError(path, "no files match this glob")
        return files
    return [path]


def detect_format(files: list[str], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = Path(files[0]).suffix.lower()
    if ext == ".gz":
        raise DataError(files[0], "compressed files are not read; decompress it first (gunzip) and point the "
                        "config at the .csv, .tsv, .jsonl or .tfrecord file")
    if ext not in EXTENSIONS:
        raise DataError(files[0], f"cannot tell the format from extension '{ext}'; set format to one of "
                        "csv, tsv, jsonl, tfrecord, recbole")
    return EXTENSIONS[ext]


def _decode(file: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(file, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
                        "save the file as UTF-8") from None


def _read_delimited(file: str, fmt: str, skip: "_Skipper") -> tuple[list[str], list[list[str]], list[int]]:
    delimiter = "," if fmt == "csv" else "\t"
    text = _decode(file, fileio.read_bytes(file))
    if not text.strip():
        raise DataError(file, "file is empty; expected a header row and data rows")
    # RecBole files are tab-separated with no quoting; csv quoting rules apply otherwise.
    reader = csv.reader(io.StringIO(text), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if fmt == "recbole" else csv.QUOTE_MINIMAL)
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(file, f"unreadable header ({e})", row=0) from None
    if fmt == "recbole":
        header = [h.split(":", 1)[0] for h in header]
    header = [h.strip() for h in header]
    if len(header) == 1:
        other = "\t" if delimiter == "," else ","
        if other in header[0]:
            name = "tab" if other == "\t" else "comma"
            raise DataError(file, f"the header has one column '{header[0][:60]}', which contains {name}s: "
                            f"the file looks {name}-separated; set format: {'tsv' if other == chr(9) else 'csv'}",
                            row=0)
        for other, name in ((";", "semicolon"), ("|", "pipe")):
            if other in header[0]:
                raise DataError(file, f"the header has one column '{header[0][:60]}', which contains {name}s: "
                                f"the file looks {name}-separated; expected {'commas' if delimiter == ',' else 'tabs'}"
                                " (save it as CSV or TSV)", row=0)
    dupes = {h for h in header if header.count(h) > 1}
    if dupes:
        raise DataError(file, f"duplicate column names in header: {', '.join(sorted(dupes))}", row=0)
    rows, lines = [], []
    row_number = 0
    while True:
        first_line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            row_number += 1
            skip(file, row_number, f"unreadable row ({e})")
            continue
        row_number += 1
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if len(fields) != len(header):
            message = f"expected {len(header)} fields as in the header, found {len(fields)}"
            if reader.line_num - first_line > 1 and any("\n" in f for f in fields):
                # Not skippable: the rows after an unclosed quote were swallowed into this one.
                raise DataError(file, f"{message}: a quoted field runs from line {first_line} over "
                                f"{reader.line_num - first_line + 1} lines; is a closing quote (\") missing?",
                                row=row_number)
            skip(file, row_number, message)
            continue
        rows.append(fields)
        lines.append(row_number)
    return header, rows, lines


def _read_jsonl(file: str, skip: "_Skipper") -> tuple[list[str], list[dict], list[int]]:
    text = _decode(file, fileio.read_bytes(file))
    if not text.strip():
        raise DataError(file, "file is empty; expected one JSON object per line")
    records, lines, keys = [], [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skip(file, n, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            skip(file, n, f"expected a JSON object, found {type(obj).__name__}")
            continue
        records.append(obj)
        lines.append(n)
        keys.update(dict.fromkeys(obj))
    return list(keys), records, lines


def _read_tfrecord(file: str, skip: "_Skipper") -> tuple[list[str], list[dict], list[int]]:
    import tensorflow as tf  # heavy: only TFRecord input needs it; CSV and JSONL reading stays TensorFlow-free

    if tf.io.gfile.stat(file).length == 0:
        raise DataError(file, "file is empty; expected TFRecord files of tf.train.Example")
    records, lines, keys = [], [], {}
    try:
        for n, raw in enumerate(tf.data.TFRecordDataset(file).as_numpy_iterator(), start=1):
            example = tf.train.Example()
            try:
                example.ParseFromString(raw)
            except Exception:  # noqa: BLE001 - protobuf raises its own DecodeError
                skip(file, n, "not a tf.train.Example record")
                continue
            obj = {}
            for key, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value) if kind else []
                if kind == "bytes_list":
                    try:
                        values = [v.decode("utf-8") for v in values]
                    except UnicodeDecodeError:
                        skip(file, n, f"feature '{key}' is not valid UTF-8")
                        break
                obj[key] = values[0] if len(values) == 1 else (None if not values else values)
                keys[key] = None
            else:
                records.append(obj)
                lines.append(n)
    except tf.errors.DataLossError as e:
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", e.message.splitlines()[0]).strip()
        raise DataError(file, f"not a TFRecord file or truncated ({reason})") from None
    return list(keys), records, lines


class _Skipper:
    """Counts unreadable rows; raises once more than ``limit`` were seen."""

    def __init__(self, limit: int):
        self.limit, self.count, self.examples = limit, 0, []

    def __call__(self, file: str, row: int, message: str) -> None:
        self.count += 1
        if self.count > self.limit:
            hint = "" if self.limit else " (set data.max_error_rows to skip such rows)"
            raise DataError(file, message + hint, row=row)
        if len(self.examples) < 5:
            self.examples.append(f"{file}, row {row}: {message}")


def read_table(path: str, fmt: str = "auto", required: Iterable[str] = (), max_error_rows: int = 0,
               base_dir: str | None = None) -> Table:
    """Reads every file ``path`` names into one :class:`Table`.

    Args:
      path: file, glob, ``pkg://`` or ``synthetic://`` path.
      fmt: ``auto`` or a format name (see module docstring).
      required: columns that must be present; a one-line DataError otherwise.
      max_error_rows: unreadable rows to skip (and count) before failing.
      base_dir: where ``synthetic://`` files are written.
    """
    files = resolve_path(path, base_dir)
    for file in files:
        if not fileio.exists(file):
            raise DataError(file, "file not found")
        if fileio.isdir(file):
            raise DataError(file, "is a folder; expected a file or a glob such as folder/*.csv")
    fmt = detect_format(files, fmt)
    skip = _Skipper(max_error_rows)
    columns: dict[str, list[Any]] = {}
    sources: list[tuple[str, int]] = []
    required = list(required)
    for file in files:
        if fmt in ("csv", "tsv", "recbole"):
            header, rows, lines = _read_delimited(file, fmt, skip)
            _require(file, header, required)
            new = {h: [r[j] for r in rows] for j, h in enumerate(header)}
        else:
            reader = _read_jsonl if fmt == "jsonl" else _read_tfrecord
            header, records, lines = reader(file, skip)
            _require(file, header, required, records, lines)
            new = {h: [r.get(h) for r in records] for h in header}
        n_before = len(sources)
        for name in set(columns) | set(new):
            columns.setdefault(name, [None] * n_before).extend(new.get(name, [None] * len(lines)))
        sources.extend((file, line) for line in lines)
    if not sources:
        raise DataError(path, "no data rows (only a header or blank lines)")
    if skip.count:
        log.warning("%s: skipped %d unreadable rows (first: %s)", path, skip.count, skip.examples[0])
    return Table(path, columns, sources, skip.count, skip.examples)


def concat_tables(tables: list[Table]) -> Table:
    """One table of the rows of ``tables``, in order (a column missing from a table reads as None there)."""
    if len(tables) == 1:
        return tables[0]
    columns: dict[str, list[Any]] = {}
    sources: list[tuple[str, int]] = []
    for t in tables:
        for name in set(columns) | set(t.columns):
            columns.setdefault(name, [None] * len(sources)).extend(t.columns.get(name, [None] * t.num_rows))
        sources.extend(t.sources)
    return Table(", ".join(t.path for t in tables), columns, sources, sum(t.skipped_rows for t in tables),
                 [e for t in tables for e in t.skipped_examples])


def _require(file: str, header: list[str], required: list[str], records=None, lines=None) -> None:
    for col in required:
        if col not in header:
            found = ", ".join(header[:20]) or "none"
            raise DataError(file, f"missing required column '{col}' (found: {found})", column=col)
        if records is not None:
            for rec, line in zip(records, lines):
                if col not in rec:
                    raise DataError(file, f"missing required key '{col}'", row=line, column=col)


def as_text(table: Table, column: str, allow_empty: bool = True) -> list[str]:
    """Column values as strings; numbers are formatted, lists rejected."""
    out = []
    for i, v in enumerate(table.columns[column]):
        if v is None:
            v = ""
        elif isinstance(v, float) and v.is_integer():
            v = str(int(v))
        elif isinstance(v, (int, float)):
            v = str(v)
        elif not isinstance(v, str):
            raise table.error(i, column, f"expected a single string, found {type(v).__name__} {str(v)[:40]}")
        out.append(v.strip())
    return out


def as_float(table: Table, column: str) -> list[float]:
    """Column values as finite floats; a DataError naming the row otherwise."""
    out = []
    for i, v in enumerate(table.columns[column]):
        try:
            f = float(v) if not isinstance(v, (list, bool)) and v not in (None, "") else None
        except (TypeError, ValueError):
            f = None
        if f is None or not math.isfinite(f):
            raise table.error(i, column, f"expected a finite number, found {str(v)[:40]!r}")
        out.append(f)
    return out
