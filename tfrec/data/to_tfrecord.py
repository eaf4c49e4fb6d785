"""Converts a CSV, TSV or JSONL file into sharded TFRecord files of ``tf.train.Example``.

    python -m tfrec.data.to_tfrecord --input FILE.csv|.tsv|.jsonl --output DIR/prefix --shards N
        [--strings COL,COL] [--overwrite]

writes ``DIR/prefix-00000-of-0000N.tfrecord`` ... (rows in file order, split
into contiguous shards), which the readers take as
``path: DIR/prefix-*.tfrecord`` (``format: auto`` or ``tfrecord``).

Feature types, one per column:

* JSONL: strings -> ``bytes_list``, integers (and true/false, as 1/0) ->
  ``int64_list``, numbers -> ``float_list`` (a column mixing integers and
  floats is a float column); a list of such values -> a multi-valued feature
  (the readers give a 1-element list back as its element: tf.train.Example
  does not tell them apart); ``null`` or a missing key -> no feature in that row.
* CSV/TSV: every cell is text. A column becomes ``int64_list`` when every cell
  is a plain integer (no sign other than '-', no leading zeros, so "007" stays
  text) and ``float_list`` when every cell is a number that float32 holds
  exactly as written (like 4.5); otherwise ``bytes_list``, so reading the
  shards back gives the same text or number the file held.
* ``--strings`` keeps the named columns as ``bytes_list`` whatever they hold.

``float_list`` is float32: a float that float32 cannot hold to within 1e-3
(e.g. a fractional Unix time) stops the conversion with a one-line error
naming the row and column; store it as an integer or with ``--strings``.
A value whose type differs from the rest of its column (text in an integer
column, an object anywhere) stops it too, naming the row and column.
The file is read twice (types, then writing), so memory stays bounded.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tfrec.errors import DataError, UserError

log = logging.getLogger("tfrec")

_PLAIN_INT = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_INT64 = (-(2**63), 2**63 - 1)
_KIND_NAMES = {"int": "an integer", "bigint": "an integer", "float": "a number", "bytes": "a string"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


# ----------------------------------------------------------------------------------------------------- reading
def _rows(path: str, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(row number, {column: value})``; CSV/TSV rows count from 1 after the header, JSONL lines from 1."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt == "jsonl":
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(path, f"not valid JSON ({e.msg} at column {e.colno})", row=n) from None
                    if not isinstance(obj, dict):
                        raise DataError(path, f"expected a JSON object, found {type(obj).__name__}", row=n)
                    yield n, obj
                return
            reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(path, "file is empty; expected a header row and data rows")
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(path, f"duplicate column names in header: {', '.join(dupes)}", row=0)
            for n, fields in enumerate(reader, start=1):
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != len(header):
                    raise DataError(path, f"expected {len(header)} fields as in the header, found {len(fields)}",
                                    row=n)
                yield n, dict(zip(header, fields))
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    except csv.Error as e:
        raise DataError(path, f"unreadable CSV ({e})") from None


def _fits_float32(value: float) -> bool:
    return abs(float(np.float32(value)) - value) <= 1e-3


def _int_kind(value: int) -> str:
    """``int``, or ``bigint`` when float32 cannot hold it exactly (such a column cannot turn float)."""
    return "int" if abs(value) <= 2**24 else "bigint"


def _csv_kind(text: str) -> str:
    """``int``, ``bigint``, ``float`` or ``bytes`` for one CSV cell (see the module docstring)."""
    if _PLAIN_INT.match(text) and _INT64[0] <= int(text) <= _INT64[1]:
        return _int_kind(int(text))
    try:
        value = float(text)
    except ValueError:
        return "bytes"
    exact = math.isfinite(value) and repr(float(np.float32(value))) == text
    return "float" if exact else "bytes"


def _json_kind(path: str, row: int, column: str, value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        if not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            raise DataError(path, f"integer {value} does not fit int64", row=row, column=column)
        return _int_kind(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(path, f"{value} is not a finite number", row=row, column=column)
        if not _fits_float32(value):
            raise DataError(path, f"{value!r} does not fit float32 (tf.train.Example's float_list) within 1e-3; "
                            "store it as an integer or keep the column as text with --strings", row=row, column=column)
        return "float"
    if isinstance(value, str):
        return "bytes"
    raise DataError(path, f"expected a string, number or list of them, found {type(value).__name__} "
                    f"{json.dumps(value)[:40]}", row=row, column=column)


class _Column:
    """A column's feature type as seen so far, and where it was decided."""

    def __init__(self):
        self.kind: str | None = None
        self.row = 0
        self.is_list = False

    def merge(self, path: str, row: int, name: str, kind: str, from_csv: bool) -> None:
        if self.kind is None:
            self.kind, self.row = kind, row
            return
        pair = {kind, self.kind}
        if len(pair) == 1:
            return
        if pair == {"int", "bigint"}:
            self.kind = "bigint"
        elif pair == {"int", "float"}:  # numbers: a float column (small integers are exact in float32)
            self.kind = "float"
        elif from_csv:  # CSV cells are text: any other disagreement keeps the column as text
            self.kind = "bytes"
        elif pair == {"bigint", "float"}:
            raise DataError(path, f"an integer float32 cannot hold exactly in a column of floats (first at row "
                            f"{self.row}); keep the column as text with --strings", row=row, column=name)
        else:
            raise DataError(path, f"expected {_KIND_NAMES[self.kind]} like the rows before (first at row "
                            f"{self.row}), found {_KIND_NAMES[kind]}", row=row, column=name)


def infer_types(path: str, fmt: str, strings: set[str] = frozenset()) -> tuple[dict[str, str], dict[str, bool], int]:
    """One pass over the file: ``({column: int|float|bytes}, {column: is a list}, row count)``."""
    columns: dict[str, _Column] = {}
    count = 0
    for row, record in _rows(path, fmt):
        count += 1
        for name, value in record.items():
            column = columns.setdefault(name, _Column())
            if value is None:
                continue
            if fmt != "jsonl":
                column.merge(path, row, name, "bytes" if name in strings else _csv_kind(value), True)
                continue
            values = value if isinstance(value, list) else [value]
            column.is_list |= isinstance(value, list)
            for v in values:
                if isinstance(v, list):
                    raise DataError(path, "nested lists are not supported", row=row, column=name)
                kind = "bytes" if name in strings else _json_kind(path, row, name, v)
                column.merge(path, row, name, kind, False)
    if not count:
        raise DataError(path, "no data rows")
    kinds = {name: {"bigint": "int", None: "bytes"}.get(c.kind, c.kind) for name, c in columns.items()}
    return kinds, {name: c.is_list for name, c in columns.items()}, count


# ----------------------------------------------------------------------------------------------------- writing
def _example(record: dict[str, Any], kinds: dict[str, str]):
    import tensorflow as tf  # heavy: kept out of the import so that --help and the type scan start fast

    features = {}
    for name, value in record.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        kind = kinds[name]
        if kind == "bytes":
            features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[(v if isinstance(v, str) else json.dumps(v)).encode("utf-8") for v in values]))
        elif kind == "int":
            features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        else:
            features[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    return tf.train.Example(features=tf.train.Features(feature=features))


def shard_paths(output: str, shards: int) -> list[str]:
    return [f"{output}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]


def convert(input_path: str, output: str, shards: int = 1, fmt: str = "auto", strings: tuple[str, ...] = (),
            overwrite: bool = False) -> dict:
    """Converts ``input_path`` into ``output-XXXXX-of-NNNNN.tfrecord`` shards; returns a summary.

    Args:
      input_path: a CSV, TSV or JSONL file.
      output: ``DIR/prefix`` of the shards (DIR is created).
      shards: number of shards (at most one per row).
      fmt: ``auto`` (by extension), ``csv``, ``tsv`` or ``jsonl``.
      strings: columns kept as ``bytes_list``.
      overwrite: replace existing ``prefix-*-of-*.tfrecord`` shards.
    """
    import tensorflow as tf  # heavy: as in _example

    if not os.path.isfile(input_path):
        raise DataError(input_path, "file not found")
    if fmt == "auto":
        ext = Path(input_path).suffix.lower()
        if ext not in FORMATS:
            raise DataError(input_path, f"cannot tell the format from extension '{ext}'; pass --format csv, tsv "
                            "or jsonl")
        fmt = FORMATS[ext]
    if fmt not in ("csv", "tsv", "jsonl"):
        raise UserError(f"--format: expected csv, tsv or jsonl, got '{fmt}'")
    if shards < 1:
        raise UserError(f"--shards: must be >= 1, got {shards}")
    kinds, lists, count = infer_types(input_path, fmt, set(strings))
    unknown = sorted(set(strings) - set(kinds))
    if unknown:
        raise UserError(f"--strings: no column named {', '.join(unknown)} in {input_path}")
    if shards > count:
        log.info("to_tfrecord: %d rows, so %d shards instead of %d", count, count, shards)
        shards = count
    digits = "[0-9]" * 5
    existing = sorted(glob.glob(f"{glob.escape(output)}-{digits}-of-{digits}.tfrecord"))
    if existing and not overwrite:
        raise UserError(f"{output}: {len(existing)} shard(s) already exist ({existing[0]}); pass --overwrite or "
                        "another --output")
    folder = os.path.dirname(output) or "."
    os.makedirs(folder, exist_ok=True)
    for path in existing:
        os.remove(path)
    paths = shard_paths(output, shards)
    bounds = [count * i // shards for i in range(shards + 1)]  # contiguous: the glob reads back in file order
    rows = _rows(input_path, fmt)
    for i, path in enumerate(paths):
        tmp = path + ".tmp"
        with tf.io.TFRecordWriter(tmp) as writer:
            for _ in range(bounds[i + 1] - bounds[i]):
                _, record = next(rows)
                writer.write(_example(record, kinds).SerializeToString())
        os.replace(tmp, path)
    summary = {"rows": count, "shards": paths, "glob": f"{output}-*.tfrecord",
               "columns": {name: kind + ("[]" if lists[name] else "") for name, kind in kinds.items()}}
    log.info("to_tfrecord: %d rows -> %d shard(s) %s (%s)", count, shards, summary["glob"],
             ", ".join(f"{k}: {v}" for k, v in summary["columns"].items()))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfrec.data.to_tfrecord", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a .csv, .tsv or .jsonl file")
    parser.add_argument("--output", required=True, help="DIR/prefix of the shards")
    parser.add_argument("--shards", type=int, default=1, help="number of shards (default 1)")
    parser.add_argument("--format", default="auto", help="auto (by extension), csv, tsv or jsonl")
    parser.add_argument("--strings", default="", help="comma-separated columns kept as text (bytes_list)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards of this prefix")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        summary = convert(args.input, args.output, args.shards, args.format,
                          tuple(c.strip() for c in args.strings.split(",") if c.strip()), args.overwrite)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
    print(f"data path: {summary['glob']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
