"""Data on any tf.io.gfile scheme: read through tf.io.gfile (ram:// here, gs:// on Cloud Storage)."""

import tensorflow as tf

from tfrec import config
from tfrec.data import dataset, readers, synthetic
from tfrec.errors import DataError


def test_data_on_ram_reads_like_local_data(tmp_path):
    synthetic.write_smoke(str(tmp_path))
    tf.io.gfile.makedirs("ram://shop/data")
    for name in ("items.csv", "interactions.csv"):
        tf.io.gfile.copy(str(tmp_path / name), f"ram://shop/data/{name}", overwrite=True)
    local = config.build("smoke", None, [f"data.items.path={tmp_path}/items.csv",
                                         f"data.interactions.path={tmp_path}/interactions.csv"])
    remote = config.build("smoke", None, ["data.items.path=ram://shop/data/items.csv",
                                          "data.interactions.path=ram://shop/data/interactions.csv"])
    assert remote.data.items.path == "ram://shop/data/items.csv"  # a URL is not made a local absolute path
    a, b = dataset.load(local.data), dataset.load(remote.data)
    assert a.counts == b.counts and a.test.item_id == b.test.item_id
    assert readers.resolve_path("ram://shop/data/*.csv") == ["ram://shop/data/interactions.csv",
                                                            "ram://shop/data/items.csv"]
    try:
        readers.read_table("ram://shop/data/missing.csv")
    except DataError as e:
        assert "ram://shop/data/missing.csv" in str(e) and "file not found" in str(e)
    else:
        raise AssertionError("a missing ram:// file was read")


def test_synthetic_data_generated_into_a_ram_job_dir():
    path = synthetic.materialize("synthetic://smoke/items.csv", "ram://job")
    assert path == "ram://job/synthetic/smoke-v2/items.csv"
    assert tf.io.gfile.exists(path) and tf.io.gfile.exists("ram://job/synthetic/smoke-v2/interactions.csv")
    catalog, _ = dataset.load_catalog(config.build("smoke").data, base_dir="ram://job")
    assert len(catalog) == 160
