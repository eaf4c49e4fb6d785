"""``split.method: files`` and ``interactions.streaming``: training shards read per worker, never held in memory."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrec import config
from tfrec.data import dataset, readers, stream
from tfrec.errors import ConfigError, DataError

SHARDS = 4  # conftest's split_files


def files_cfg(root: Path, train_path: str, streaming: bool, *sets: str) -> config.Config:
    overrides = [f"data.interactions.path={train_path}", f"data.items.path={root / 'items.csv'}",
                 "data.split.method=files", f"data.split.validation_path={root / 'validation.csv'}",
                 f"data.split.test_path={root / 'test.csv'}", f"data.interactions.streaming={str(streaming).lower()}",
                 *sets]
    return config.build("smoke", sets=overrides)


def test_files_split_reads_each_file_as_its_split(split_files):
    root, _, parts = split_files
    data = dataset.load(files_cfg(root, str(root / "train.csv"), False).data)
    assert data.stream is None
    assert data.counts["validation"] == len(parts["validation"]) and data.counts["test"] == len(parts["test"])
    assert data.counts["train"] == len(parts["train"]) - 2
    assert data.skipped == {"unknown_items": 1, "empty_queries": 1}
    assert sorted(data.test.item_id) == sorted(r["item_id"] for r in parts["test"])


def test_streaming_scan_counts_like_the_in_memory_reader(split_files):
    root, shards, parts = split_files
    memory = dataset.load(files_cfg(root, str(root / "train.csv"), False).data)
    streamed = dataset.load(files_cfg(root, shards, True).data)
    assert len(streamed.train) == 0 and len(streamed.stream.files) == SHARDS  # nothing of training in memory
    assert streamed.num_train == memory.num_train == len(parts["train"]) - 2
    assert streamed.counts == memory.counts and streamed.skipped == memory.skipped
    np.testing.assert_array_equal(streamed.item_counts(), memory.item_counts())
    np.testing.assert_array_equal(streamed.item_probability(), memory.item_probability())


def _kept_pairs(files, catalog) -> Counter:
    """(query, item) of the usable records in ``files``, read with the in-memory reader."""
    pairs = Counter()
    for file in files:
        table = readers.read_table(file)
        for q, i in zip(readers.as_text(table, "query"), readers.as_text(table, "item_id")):
            if q and i in catalog.position:
                pairs[(q, i)] += 1
    return pairs


def _take(ds, n_batches) -> Counter:
    pairs = Counter()
    for batch in ds.take(n_batches):
        ids = batch["item_id"].numpy()
        for q, i in zip(batch["query_text"].numpy(), ids):
            pairs[(q.decode(), i.decode())] += 1
    return pairs


def test_each_worker_reads_its_own_shards_and_an_epoch_is_every_record_once(split_files):
    root, shards, _ = split_files
    data = dataset.load(files_cfg(root, shards, True).data)
    files = data.stream.files
    seen = Counter()
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        ds = stream.make_dataset(data.stream, data.catalog, data.item_probability(), batch_size=2, seed=3,
                                 input_context=ctx)  # per-replica batch 1: no partial batch dropped
        want = _kept_pairs(files[worker::2], data.catalog)
        n = sum(want.values())
        assert _take(ds, n) == want  # epoch 1: exactly this worker's shards, each record once
        two = _take(ds, 2 * n)
        assert two == want + want  # epoch 2 again every record once (a fresh order)
        seen += want
        batch = next(iter(ds))
        assert batch["item_text"].shape == [1] and batch["item_probability"].dtype == tf.float32
        positions = [data.catalog.position[i.decode()] for i in batch["item_id"].numpy()]
        np.testing.assert_allclose(batch["item_probability"].numpy(), data.item_probability()[positions])
        assert batch["item_genre"].numpy()[0].decode() == data.catalog.categorical["genre"][positions[0]]
    assert seen == _kept_pairs(files, data.catalog)  # together the workers cover the data set once
    with pytest.raises(DataError, match="5 workers read the training shards but there are only 4"):
        stream.make_dataset(data.stream, data.catalog, data.item_probability(), 10, 0,
                            tf.distribute.InputContext(5, 0, 5))


def test_stream_is_seeded_and_resumes_by_skipping(split_files):
    root, shards, _ = split_files
    data = dataset.load(files_cfg(root, shards, True).data)

    def ids(skip, n):
        ds = stream.make_dataset(data.stream, data.catalog, data.item_probability(), 8, 5, skip_batches=skip)
        return [b["item_id"].numpy().tolist() for b in ds.take(n)]

    assert ids(0, 6) == ids(0, 6)  # the same seed, the same stream
    assert ids(0, 6)[4:] == ids(4, 2)  # a resumed run sees exactly the batches an uninterrupted one would


def test_cached_encodings_are_gathered_in_graph(split_files):
    root, shards, parts = split_files
    data = dataset.load(files_cfg(root, shards, True).data)
    texts = sorted({r["query"] for r in parts["train"] if r["query"]})

    def encode(t):
        return np.array([[len(x), hash(x) % 97] for x in t], np.float32)

    from tfrec.data.pipeline import TextCache

    qc, ic = TextCache(texts, encode), TextCache(data.catalog.texts, encode)
    batch = next(iter(stream.make_dataset(data.stream, data.catalog, data.item_probability(), 4, 0,
                                          query_cache=qc, item_cache=ic)))
    assert "query_text" not in batch and "item_text" not in batch
    positions = [data.catalog.position[i.decode()] for i in batch["item_id"].numpy()]
    np.testing.assert_array_equal(batch["item_text_encoding"].numpy(), ic.lookup([data.catalog.texts[p]
                                                                                  for p in positions]))
    assert batch["query_text_encoding"].shape == [4, 2]


def test_streaming_config_needs_files_split_and_a_query_column(split_files):
    root, shards, _ = split_files
    with pytest.raises(ConfigError, match="data.interactions.streaming.*split.method=files"):
        config.build("smoke", sets=["data.interactions.streaming=true"])
    with pytest.raises(ConfigError, match="data.split.validation_path.*required"):
        config.build("smoke", sets=["data.split.method=files"])
    with pytest.raises(ConfigError, match="eval.exclude_seen"):
        files_cfg(root, shards, True, "eval.exclude_seen=true")


def test_bad_record_names_shard_and_record(split_files, tmp_path):
    root, shards, _ = split_files
    bad = tmp_path / "bad-00000-of-00001.tfrecord"
    good = next(iter(tf.data.TFRecordDataset(sorted(Path(p) for p in readers.resolve_path(shards))[0].as_posix())))
    example = tf.train.Example.FromString(good.numpy())
    example.features.feature["rating"].Clear()
    example.features.feature["rating"].bytes_list.value.append(b"five")
    with tf.io.TFRecordWriter(str(bad)) as w:
        w.write(good.numpy())
        w.write(good.numpy())
        w.write(example.SerializeToString())
    with pytest.raises(DataError) as e:
        dataset.load(files_cfg(root, str(bad), True).data)
    message = str(e.value)
    assert str(bad) in message and "row 3" in message and "rating" in message and "one integer" in message, message


def test_trainer_trains_on_streamed_shards(split_files, tmp_path):
    from trainer import task

    root, shards, parts = split_files
    job = tmp_path / "job"
    sets = [f"data.interactions.path={shards}", f"data.items.path={root / 'items.csv'}", "data.split.method=files",
            f"data.split.validation_path={root / 'validation.csv'}", f"data.split.test_path={root / 'test.csv'}",
            "data.interactions.streaming=true", "train.epochs=2", "train.max_steps_per_epoch=4",
            "export.enabled=false"]
    argv = ["--preset", "smoke", "--job-dir", str(job)]
    for s in sets:
        argv += ["--set", s]
    assert task.main(argv) == 0
    report = json.loads((job / "eval.json").read_text())
    assert report["data"]["counts"]["train"] == len(parts["train"]) - 2
    assert report["data"]["skipped"] == {"unknown_items": 1, "empty_queries": 1}
    assert "popularity" in report["baselines"] and "id_two_tower" not in report["baselines"]
    assert report["training"]["epochs_run"] == 2 and 0.0 <= report["model"]["recall@10"] <= 1.0


def test_shards_of_different_types_are_named(split_files, tmp_path):
    root, shards, _ = split_files
    good = next(iter(tf.data.TFRecordDataset(readers.resolve_path(shards)[0]))).numpy()
    changed = tf.train.Example.FromString(good)
    changed.features.feature["rating"].Clear()
    changed.features.feature["rating"].float_list.value.append(4.5)  # int64 in the first shard
    for i, record in enumerate((good, changed.SerializeToString())):
        with tf.io.TFRecordWriter(str(tmp_path / f"mixed-0000{i}-of-00002.tfrecord")) as w:
            w.write(record)
    with pytest.raises(DataError, match=r"mixed-00001-of-00002.tfrecord, row 1, column 'rating': feature 'rating' "
                                        r"is float32 here but int64 in .*mixed-00000"):
        dataset.load(files_cfg(root, str(tmp_path / "mixed-*.tfrecord"), True).data)


def test_streamed_run_keeps_no_query_cache(split_files, caplog):
    """A frozen encoder's query cache would hold every distinct training query, which grows with the data: a
    streamed run encodes queries as they are read and caches only the catalog's texts."""
    from tfrec import run

    root, shards, _ = split_files
    cfg = files_cfg(root, shards, True, "model.query_encoder.trainable_layers=0")
    data = dataset.load(cfg.data)
    with caplog.at_level("INFO", logger="tfrec"):
        features = run.build_features(cfg, data, run.build_model(cfg, data))
    assert features.query_cache is None and features.item_cache is not None
    assert "query texts of a streamed run are encoded as they are read" in caplog.text
