import csv

import numpy as np

from tfrec import config as config_lib
from tfrec.data import dataset, synthetic


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_shop_is_seeded_skewed_and_read_by_the_trainer_readers(tmp_path):
    counts = synthetic.write_shop(str(tmp_path / "a"), num_interactions=3000, num_items=200, seed=1)
    synthetic.write_shop(str(tmp_path / "b"), num_interactions=3000, num_items=200, seed=1)
    synthetic.write_shop(str(tmp_path / "c"), num_interactions=3000, num_items=200, seed=2)
    a = (tmp_path / "a" / "interactions.csv").read_bytes()
    assert a == (tmp_path / "b" / "interactions.csv").read_bytes()
    assert a != (tmp_path / "c" / "interactions.csv").read_bytes()

    rows = _rows(tmp_path / "a" / "interactions.csv")
    items = _rows(tmp_path / "a" / "items.csv")
    assert len(rows) == 3000 and len(items) == 200 == counts["items"]
    per_user = {}
    for r in rows:
        per_user.setdefault(r["user_id"], []).append(int(r["timestamp"]))
    assert len(per_user) == counts["users"] and min(len(t) for t in per_user.values()) >= 3
    assert all(t == sorted(t) for t in per_user.values())  # histories in time order
    # Zipf-like: the most bought item sells far more than the median one.
    sold = np.sort(np.bincount([int(r["item_id"][1:]) for r in rows], minlength=200))[::-1]
    assert sold[0] > 10 * max(sold[100], 1)
    # The query names words of the item's title (so text towers have something to learn).
    title = {i["item_id"]: set(i["title"].split()) for i in items}
    named = [len(set(r["query"].split()) & title[r["item_id"]]) for r in rows]
    assert set(named) == {2, 3} and 0.3 < named.count(3) / len(named) < 0.5  # 2 words, 40% also the number

    cfg = config_lib.build("smoke", None, [f"data.interactions.path={tmp_path}/a/interactions.csv",
                                           f"data.items.path={tmp_path}/a/items.csv",
                                           "data.items.categorical_columns=[category]",
                                           "data.items.text_columns=[title, category]"])
    data = dataset.load(cfg.data)
    assert data.counts["items"] == 200 and data.num_train + len(data.validation) + len(data.test) == 3000


def test_shop_held_out_files_are_the_leave_last_split(tmp_path):
    counts = synthetic.write_shop(str(tmp_path), num_interactions=500, num_items=50, seed=3, held_out_files=True)
    rows = _rows(tmp_path / "interactions.csv")
    train, val, test = (_rows(tmp_path / f"{n}.csv") for n in ("train", "validation", "test"))
    assert len(test) == len(val) == counts["users"] and len(train) + len(val) + len(test) == 500
    last = {}
    for i, r in enumerate(rows):
        last[r["user_id"]] = last.get(r["user_id"], []) + [i]
    assert sorted(r["timestamp"] for r in test) == sorted(rows[v[-1]]["timestamp"] for v in last.values())
    assert sorted(r["timestamp"] for r in val) == sorted(rows[v[-2]]["timestamp"] for v in last.values())


def test_shop_training_shards_hold_the_training_rows_and_a_fixed_held_out_sample(tmp_path):
    import tensorflow as tf

    synthetic.write_shop(str(tmp_path / "csv"), num_interactions=600, num_items=40, seed=5, held_out_files=True)
    counts = synthetic.write_shop(str(tmp_path / "tfr"), num_interactions=600, num_items=40, seed=5,
                                  held_out_files=True, train_shards=3)
    shards = sorted((tmp_path / "tfr" / "shards").iterdir())
    assert [p.name for p in shards] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert not (tmp_path / "tfr" / "train.csv").exists() and not (tmp_path / "tfr" / "interactions.csv").exists()
    spec = {c: tf.io.FixedLenFeature([], tf.string) for c in ("user_id", "item_id", "query")}
    spec |= {c: tf.io.FixedLenFeature([], tf.int64) for c in ("rating", "timestamp")}
    parsed = tf.io.parse_example(next(iter(tf.data.TFRecordDataset([str(p) for p in shards]).batch(1000))), spec)
    got = [{c: (v.decode() if isinstance(v, bytes) else str(v)) for c, v in zip(parsed, row)}
           for row in zip(*(parsed[c].numpy().tolist() for c in parsed))]
    assert got == _rows(tmp_path / "csv" / "train.csv") and len(got) == counts["train"]  # same rows, same text
    for name in ("validation.csv", "test.csv", "items.csv"):
        assert (tmp_path / "tfr" / name).read_bytes() == (tmp_path / "csv" / name).read_bytes()

    # A sample of 10 users is held out; everyone else's rows all train.
    small = synthetic.write_shop(str(tmp_path / "few"), num_interactions=600, num_items=40, seed=5,
                                 held_out_users=10, train_shards=2)
    val, test = _rows(tmp_path / "few" / "validation.csv"), _rows(tmp_path / "few" / "test.csv")
    assert len(val) == len(test) == 10 == small["test"] and small["train"] == 580
    assert [r["user_id"] for r in val] == [r["user_id"] for r in test]
    assert all(int(v["timestamp"]) < int(t["timestamp"]) for v, t in zip(val, test))


def test_smoke_files_of_an_older_release_are_not_read(tmp_path):
    stale = tmp_path / "synthetic" / "smoke"  # where releases before SMOKE_VERSION 2 wrote them
    stale.mkdir(parents=True)
    (stale / "interactions.csv").write_text("user_id,item_id,query,rating,timestamp\nu,i,old,1,1\n")
    path = synthetic.materialize("synthetic://smoke/interactions.csv", str(tmp_path))
    assert path == str(tmp_path / "synthetic" / f"smoke-v{synthetic.SMOKE_VERSION}" / "interactions.csv")
    rows = open(path).read().splitlines()
    assert len(rows) == 1 + 60 * 16 and "old" not in rows[1]
    queries = [r.split(",")[2].split()[2:] for r in rows[1:]]
    synonyms = set(synthetic.SYNONYMS.values())
    share = sum(w in synonyms for q in queries for w in q) / (2 * len(queries))
    assert 0.4 < share < 0.6  # each query word is its synonym half the time
