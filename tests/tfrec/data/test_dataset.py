"""Data loading: every data problem ends in a one-line error or a counted skip."""

import json

import numpy as np
import pytest

from tfrec import config
from tfrec.data import dataset, readers
from tfrec.errors import DataError

ITEMS = "item_id,title,genre\ni1,Alpha,x\ni2,Beta,y\ni3,Gamma,x\ni4,Delta,y\n"


def make_cfg(tmp_path, interactions: str, items: str = ITEMS, ext: str = "csv", **data_overrides):
    (tmp_path / f"inter.{ext}").write_text(interactions, encoding="utf-8")
    (tmp_path / "items.csv").write_text(items, encoding="utf-8")
    return config.updated(config.build("smoke"), {  # configs are frozen: each change makes a new one
        "data.interactions.path": str(tmp_path / f"inter.{ext}"), "data.items.path": str(tmp_path / "items.csv"),
        "data.items.categorical_columns": [], **{f"data.{k}": v for k, v in data_overrides.items()}})


def rows(n_users=3, per_user=4):
    out = ["user_id,item_id,query,rating,timestamp"]
    for u in range(n_users):
        for j in range(per_user):
            out.append(f"u{u},i{(u + j) % 4 + 1},query {u} {j},{j + 1},{100 * u + j}")
    return "\n".join(out) + "\n"


def test_leave_last_split_and_counts(tmp_path):
    data = dataset.load(make_cfg(tmp_path, rows()).data)
    assert data.counts["train"] == 6 and len(data.validation) == 3 and len(data.test) == 3
    # u0's interactions in time order: i1, i2, i3, i4 -> test i4, validation i3
    u0_test = [i for u, i in zip(data.test.user_id, data.test.item_id) if u == "u0"]
    u0_val = [i for u, i in zip(data.validation.user_id, data.validation.item_id) if u == "u0"]
    assert u0_test == ["i4"] and u0_val == ["i3"]


def test_leave_last_ties_keep_file_order(tmp_path):
    text = "user_id,item_id,query,rating,timestamp\n" + "".join(
        f"u0,i{j},q{j},1,5\n" for j in (3, 1, 4, 2))
    data = dataset.load(make_cfg(tmp_path, text).data)
    assert data.test.item_id == ["i2"] and data.validation.item_id == ["i4"]
    assert data.train.item_id == ["i3", "i1"]


def test_history_queries_most_recent_first(tmp_path):
    cfg = make_cfg(tmp_path, rows(n_users=1, per_user=4))
    cfg = config.updated(cfg, {"data.interactions.query_column": None, "data.interactions.query_history_items": 2,
                               "data.interactions.query_history_columns": ["title"]})
    data = dataset.load(cfg.data)
    assert data.test.query_text == ["Gamma; Beta"]  # before i4: i3 (latest), then i2
    assert data.skipped["no_history"] == 1  # the user's first interaction has no history


def test_random_and_time_splits_are_disjoint(tmp_path):
    for method in ("random", "time"):
        cfg = make_cfg(tmp_path, rows(n_users=10, per_user=10))
        cfg = config.updated(cfg, {"data.split.method": method, "data.split.test_fraction": 0.2,
                                   "data.split.validation_fraction": 0.2})
        data = dataset.load(cfg.data)
        assert len(data.train) + len(data.validation) + len(data.test) == 100
        assert len(data.test) == 20
        if method == "time":
            assert data.train.timestamp.max() <= data.validation.timestamp.min() <= data.test.timestamp.min()


def test_unknown_item_skipped_and_counted_or_error(tmp_path):
    text = rows() + "u0,i99,query,3,1000\n"
    data = dataset.load(make_cfg(tmp_path, text).data)
    assert data.skipped["unknown_items"] == 1
    cfg = make_cfg(tmp_path, text, skip_unknown_items=False)
    with pytest.raises(DataError, match=r"inter.csv, row 13, column 'item_id': item 'i99' is not in the catalog"):
        dataset.load(cfg.data)


def test_empty_query_skipped_or_error(tmp_path):
    text = rows() + "u1,i1,,3,1000\n"
    assert dataset.load(make_cfg(tmp_path, text).data).skipped["empty_queries"] == 1
    with pytest.raises(DataError, match=r"row 13, column 'query': empty query text"):
        dataset.load(make_cfg(tmp_path, text, skip_empty_queries=False).data)


def test_duplicate_item_ids(tmp_path):
    same = ITEMS + "i1,Alpha,x\n"
    assert dataset.load(make_cfg(tmp_path, rows(), items=same).data).skipped["duplicate_items"] == 1
    different = ITEMS + "i1,Omega,x\n"
    with pytest.raises(DataError, match=r"items.csv, row 5, column 'item_id': duplicate item id 'i1'"):
        dataset.load(make_cfg(tmp_path, rows(), items=different).data)


def test_missing_column_and_file(tmp_path):
    cfg = make_cfg(tmp_path, rows().replace("rating", "stars"))
    with pytest.raises(DataError, match=r"inter.csv, column 'rating': missing required column 'rating'"):
        dataset.load(cfg.data)
    cfg = config.updated(cfg, {"data.interactions.path": str(tmp_path / "nope.csv")})
    with pytest.raises(DataError, match="nope.csv: file not found"):
        dataset.load(cfg.data)


def test_bad_label_names_row_and_column(tmp_path):
    text = rows().replace("u1,i2,query 1 0,1,100", "u1,i2,query 1 0,nan,100")
    with pytest.raises(DataError, match=r"row 5, column 'rating': expected a finite number, found 'nan'"):
        dataset.load(make_cfg(tmp_path, text).data)


def test_wrong_delimiter(tmp_path):
    with pytest.raises(DataError, match="looks tab-separated; set format: tsv"):
        dataset.load(make_cfg(tmp_path, rows().replace(",", "\t")).data)


def test_non_utf8_names_line(tmp_path):
    cfg = make_cfg(tmp_path, rows())
    path = tmp_path / "inter.csv"
    path.write_bytes(path.read_bytes().replace(b"query 2 1", b"query \xff 1"))
    with pytest.raises(DataError, match=r"not valid UTF-8 .* line 11"):
        dataset.load(cfg.data)


def test_short_row_error_or_counted_skip(tmp_path):
    text = rows() + "u0,i1\n"
    with pytest.raises(DataError, match=r"row 13: expected 5 fields as in the header, found 2"):
        dataset.load(make_cfg(tmp_path, text).data)
    data = dataset.load(make_cfg(tmp_path, text, max_error_rows=1).data)
    assert data.skipped["unreadable_interaction_rows"] == 1


def test_jsonl_and_broken_line(tmp_path):
    lines = [json.dumps({"user_id": f"u{u}", "item_id": f"i{j % 4 + 1}", "query": f"q{u}{j}", "rating": 4,
                         "timestamp": u * 10 + j}) for u in range(3) for j in range(4)]
    cfg = make_cfg(tmp_path, "\n".join(lines) + "\n", ext="jsonl")
    assert len(dataset.load(cfg.data).test) == 3
    cfg = make_cfg(tmp_path, "\n".join(lines[:5] + ["{broken"] + lines[5:]) + "\n", ext="jsonl")
    with pytest.raises(DataError, match=r"inter.jsonl, row 6: not valid JSON"):
        dataset.load(cfg.data)


def test_tfrecord_shards_glob_and_wrong_type(tmp_path):
    import tensorflow as tf

    def example(u, j, item_as_float=False):
        f = {"user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"u{u}".encode()])),
             "query": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"q{u}{j}".encode()])),
             "rating": tf.train.Feature(float_list=tf.train.FloatList(value=[3.0])),
             "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[u * 10 + j]))}
        f["item_id"] = (tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, 2.5])) if item_as_float else
                        tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"i{j % 4 + 1}".encode()])))
        return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{shard}.tfrecord")) as w:
            for u in range(shard * 2, shard * 2 + 2):
                for j in range(4):
                    w.write(example(u, j))
    cfg = make_cfg(tmp_path, rows())
    cfg = config.updated(cfg, {"data.interactions.path": str(tmp_path / "part-*.tfrecord")})
    data = dataset.load(cfg.data)
    assert len(data.test) == 4 and data.counts["interactions_read"] == 16
    with tf.io.TFRecordWriter(str(tmp_path / "part-1.tfrecord")) as w:
        w.write(example(9, 0, item_as_float=True))
    with pytest.raises(DataError, match=r"part-1.tfrecord, row 1, column 'item_id': expected a single string"):
        dataset.load(cfg.data)


def test_recbole_headers_and_pkg_path():
    table = readers.read_table("pkg://recbole/dataset_example/ml-100k/ml-100k.item", "recbole")
    assert {"item_id", "movie_title", "class"} <= set(table.columns)
    assert table.num_rows == 1682


def test_item_probability_sums_to_one(tmp_path):
    data = dataset.load(make_cfg(tmp_path, rows()).data)
    p = data.item_probability()
    assert p.shape == (4,) and np.isclose(p.sum(), 1.0) and (p > 0).all()
