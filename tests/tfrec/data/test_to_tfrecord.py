"""``python -m tfrec.data.to_tfrecord``: CSV/JSONL -> sharded tf.train.Example, read back identically."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from tfrec import config
from tfrec.data import dataset, readers, to_tfrecord
from tfrec.errors import DataError, UserError

REPO = Path(__file__).resolve().parents[3]


def _kinds(path: str) -> dict:
    raw = next(iter(tf.data.TFRecordDataset(path)))
    example = tf.train.Example.FromString(raw.numpy())
    return {k: f.WhichOneof("kind") for k, f in example.features.feature.items()}


def test_jsonl_round_trip_over_shards(tmp_path):
    rows = [{"user": f"u{i}", "item": i * 7, "rating": [4.5, 3.0, 2.25][i % 3], "tags": ["a", "b"][: 1 + i % 2],
             "note": None if i % 4 == 0 else f"ünï {i}"} for i in range(10)]
    rows[3]["rating"] = 5  # an integer in a float column: a float column
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = to_tfrecord.convert(str(src), str(tmp_path / "out" / "inter"), shards=3)
    assert [Path(p).name for p in summary["shards"]] == [f"inter-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert summary["columns"] == {"user": "bytes", "item": "int", "rating": "float", "tags": "bytes[]",
                                  "note": "bytes"}
    assert _kinds(summary["shards"][0]) == {"user": "bytes_list", "item": "int64_list", "rating": "float_list",
                                            "tags": "bytes_list"}  # row 0's note is null: no feature
    back = readers.read_table(summary["glob"])
    want = readers.read_table(str(src))
    assert back.num_rows == 10
    for column in want.columns:
        # tf.train.Example has no scalar/list distinction: the reader gives a 1-element list as its element.
        expected = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in want.columns[column]]
        assert back.columns[column] == expected, column
    assert back.columns["tags"][1] == ["a", "b"]
    assert [r for _, r in back.sources] == [1, 2, 3, 1, 2, 3, 1, 2, 3, 4]  # contiguous shards, file order


def test_csv_round_trip_keeps_text(tmp_path):
    src = tmp_path / "items.csv"
    src.write_text("item_id,title,year,score,code\n"
                   "i1,\"Alpha, the first\",1999,4.5,007\n"
                   "i2,Beta,2001,3,12\n"
                   "i3,Gamma,-5,0.1,x\n", encoding="utf-8")
    summary = to_tfrecord.convert(str(src), str(tmp_path / "items"), shards=2)
    # 0.1 is not exact in float32, so "score" stays text; "007" keeps "code" text.
    assert summary["columns"] == {"item_id": "bytes", "title": "bytes", "year": "int", "score": "bytes",
                                  "code": "bytes"}
    back, want = readers.read_table(summary["glob"]), readers.read_table(str(src))
    for column in want.columns:
        assert readers.as_text(back, column) == readers.as_text(want, column), column
    assert back.columns["year"] == [1999, 2001, -5]
    exact = tmp_path / "exact.csv"
    exact.write_text("r\n4.5\n3\n0.25\n")
    assert to_tfrecord.convert(str(exact), str(tmp_path / "exact"))["columns"] == {"r": "float"}
    assert readers.as_text(readers.read_table(str(tmp_path / "exact-*.tfrecord")), "r") == ["4.5", "3", "0.25"]


def test_smoke_data_set_loads_the_same_from_shards(tmp_path):
    from tfrec.data import synthetic

    cfg = config.build("smoke")
    inter = synthetic.materialize(cfg.data.interactions.path, str(tmp_path))
    items = synthetic.materialize(cfg.data.items.path, str(tmp_path))
    want = dataset.load(cfg.data, base_dir=str(tmp_path))  # the files materialize just wrote
    for src, prefix in ((inter, "inter"), (items, "items")):
        assert to_tfrecord.main(["--input", src, "--output", str(tmp_path / "tfr" / prefix), "--shards", "3"]) == 0
    cfg = config.updated(cfg, {"data.interactions.path": str(tmp_path / "tfr" / "inter-*.tfrecord"),
                               "data.items.path": str(tmp_path / "tfr" / "items-*.tfrecord")})
    got = dataset.load(cfg.data)
    assert got.counts == want.counts
    assert got.catalog.item_ids == want.catalog.item_ids and got.catalog.texts == want.catalog.texts
    for split in ("train", "validation", "test"):
        a, b = getattr(got, split), getattr(want, split)
        assert (a.query_text, a.item_id, list(a.label)) == (b.query_text, b.item_id, list(b.label)), split


def test_inconsistent_column_names_row_and_column(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n{"a": "three", "b": "z"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 3, column 'a': expected an integer like the rows before "
                                        r"\(first at row 1\), found a string"):
        to_tfrecord.convert(str(src), str(tmp_path / "out"))
    assert to_tfrecord.main(["--input", str(src), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not list(tmp_path.glob("out-*"))  # nothing written
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"a": {"b": 1}}\n')
    with pytest.raises(DataError, match=r"row 1, column 'a': expected a string, number or list"):
        to_tfrecord.convert(str(nested), str(tmp_path / "n"))
    stamps = tmp_path / "ts.jsonl"
    stamps.write_text('{"t": 1700000000.25}\n')
    with pytest.raises(DataError, match=r"row 1, column 't': .*does not fit float32"):
        to_tfrecord.convert(str(stamps), str(tmp_path / "t"))
    assert to_tfrecord.convert(str(stamps), str(tmp_path / "t"), strings=("t",))["columns"] == {"t": "bytes"}


def test_existing_shards_need_overwrite(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n2\n3\n")
    to_tfrecord.convert(str(src), str(tmp_path / "p"), shards=3)
    with pytest.raises(UserError, match="already exist"):
        to_tfrecord.convert(str(src), str(tmp_path / "p"), shards=2)
    to_tfrecord.convert(str(src), str(tmp_path / "p"), shards=2, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("p-*")) == ["p-00000-of-00002.tfrecord", "p-00001-of-00002.tfrecord"]
    assert to_tfrecord.convert(str(src), str(tmp_path / "q"), shards=10)["rows"] == 3  # at most a shard per row
    assert len(list(tmp_path.glob("q-*"))) == 3


def test_module_entry_point(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"x": "a"}\n{"x": "b"}\n')
    proc = subprocess.run([sys.executable, "-m", "tfrec.data.to_tfrecord", "--input", str(src), "--output",
                           str(tmp_path / "o" / "x"), "--shards", "2"], cwd=str(REPO), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"data path: {tmp_path / 'o' / 'x'}-*.tfrecord" in proc.stdout
    assert readers.read_table(str(tmp_path / "o" / "x-*.tfrecord")).columns["x"] == ["a", "b"]
