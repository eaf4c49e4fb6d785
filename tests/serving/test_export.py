"""Export bundle: three indexes, the recall gate, atomic publishing, reindexing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from serving import reindex
from tfrec import config as config_lib
from tfrec.export import layout
from tfrec.export import savedmodel as export
from tfrec.trained import load_trained
from tfrec import index as index_lib
from trainer import task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    job = tmp_path_factory.mktemp("export_job")
    assert task.main(["--preset", "smoke", "--job-dir", str(job), "--set", "train.epochs=1",
                      "--set", "eval.baselines=false", "--set", "export.enabled=false",
                      "--set", "retrieval.hybrid=off"]) == 0  # dense scores (tests/tfrec/test_hybrid_run.py: fused)
    return job


@pytest.fixture
def small_catalogs_allowed(monkeypatch):
    # The smoke catalog (160 items) is below the size where approximate indexes are built.
    monkeypatch.setattr(index_lib, "APPROXIMATE_MIN_ITEMS", 16)


def test_all_indexes_with_signatures_and_report(trained, small_catalogs_allowed):
    cfg, model, data = load_trained(trained)
    cfg = config_lib.updated(cfg, {"export.min_recall": 0.5})
    from tfrec import evaluate
    from tfrec.data import pipeline

    items = evaluate.embed(model.item_tower, pipeline.item_features(data.catalog, np.arange(len(data.catalog))))
    paths = export.export_run(cfg, trained, model, data, items, index="all", k=10)
    assert [p.parent.name for p in paths] == ["smoke", "smoke_ivf", "smoke_scann"]
    assert len({p.name for p in paths}) == 1  # one version number across the bundle
    config = layout.read_models_config(trained / "export" / "models.config")
    assert set(config) == {"smoke", "smoke_ivf", "smoke_scann"}
    assert (trained / "export" / "batching_parameters.txt").is_file()
    for path in paths:
        report = json.loads((path / "assets.extra" / "export_report.json").read_text())
        assert report["config_hash"] and report["data"]["items"] == 160
        if report["index"]["kind"] != "brute_force":
            assert 0.5 <= report["index"]["recall"]["recall@10"] <= 1.0
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(paths[1]), "--all"], capture_output=True, text=True)
    for name in ("serving_default", "retrieve", "embed_query", "embed_item", "exclude_item_ids", "item_ids"):
        assert name in shown.stdout
    # The model's own top 10 without item0001, from the Python towers: the exact index serves exactly these;
    # every index serves each item with its true score, best first.
    query = model.query_tower({"query_text": tf.constant(["looking for ghost"])}).numpy()[0]
    true_scores = dict(zip(data.catalog.item_ids, items @ query))
    del true_scores["item0001"]
    want = sorted(true_scores, key=true_scores.get, reverse=True)[:10]
    for path in paths:
        loaded = tfrec.load_export(path)  # ScaNN's ops for the _scann model
        out = loaded.signatures["serving_default"](query_text=tf.constant(["looking for ghost"]),
                                                   exclude_item_ids=tf.constant([["item0001"]]))
        got, scores = out["item_ids"].numpy()[0].astype(str).tolist(), out["scores"].numpy()[0]
        assert len(got) == 10 and "item0001" not in got
        np.testing.assert_allclose(scores, [true_scores[i] for i in got], rtol=1e-4, atol=1e-5)
        assert (np.diff(scores) <= 1e-6).all()
        if path.parent.name == "smoke":
            assert got == want


def test_recall_gate_refuses_a_bad_index(trained, small_catalogs_allowed, capsys):
    cfg, model, data = load_trained(trained)
    before = {p.name for p in (trained / "export").glob("*/*")} if (trained / "export").exists() else set()
    cfg = config_lib.updated(cfg, {"export.min_recall": 0.99})
    from tfrec import evaluate
    from tfrec.data import pipeline

    items = evaluate.embed(model.item_tower, pipeline.item_features(data.catalog, np.arange(len(data.catalog))))
    bad = {"ivf": {"num_partitions": 4, "nprobe": 1}}  # searches 1 of 4 partitions (40 of 160 items)
    with pytest.raises(export.ExportRefused, match=r"recall@10=0\.\d+ .* below export.min_recall=0.99"):
        export.export_run(cfg, trained, model, data, items, index="ivf", k=10, index_params=bad)
    after = {p.name for p in (trained / "export").glob("*/*")} if (trained / "export").exists() else set()
    assert after == before  # nothing published


def test_interrupted_export_publishes_nothing(trained, monkeypatch):
    cfg, model, data = load_trained(trained)
    from tfrec import evaluate
    from tfrec.data import pipeline

    items = evaluate.embed(model.item_tower, pipeline.item_features(data.catalog, np.arange(len(data.catalog))))
    real_save = tf.saved_model.save

    def save_then_die(module, folder, **kwargs):
        real_save(module, folder, **kwargs)  # a complete SavedModel in the temporary folder...
        raise KeyboardInterrupt  # ...and the process is interrupted before the rename

    base = trained / "export" / "smoke"
    versions = layout.latest_version(base) if base.exists() else None
    monkeypatch.setattr(tf.saved_model, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        export.export_run(cfg, trained, model, data, items, index="brute_force", k=10)
    assert layout.latest_version(base) == versions
    assert not [p for p in base.iterdir() if not p.name.isdigit()]  # no temporary folder left either


def test_reindex_publishes_a_new_catalog(trained, tmp_path):
    old = (trained / "synthetic" / "smoke-v2" / "items.csv").read_text().splitlines()
    new_items = old + ["new0001,haunted ghost scream,horror", "new0002,jazz piano song,music"]
    (tmp_path / "items.csv").write_text("\n".join(new_items) + "\n")
    base = trained / "export" / "smoke"
    before = layout.latest_version(base) or 0
    (path,) = reindex.reindex(str(trained), str(tmp_path / "items.csv"), index="brute_force", k=200)
    assert int(path.name) == before + 1
    report = json.loads((path / "assets.extra" / "export_report.json").read_text())
    assert report["data"]["items"] == 162 and report["data"]["new_items"] == 2
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](query_text=tf.constant(["x"]), exclude_item_ids=tf.zeros([1, 0], tf.string))
    ids = set(out["item_ids"].numpy()[0].astype(str))
    assert len(ids) == 162 and {"new0001", "new0002"} <= ids  # k=200 > catalog: everything, new items included


def test_export_cli_exit_2_on_missing_run(tmp_path, capsys):
    from serving import export as export_cli

    assert export_cli.main(["--job-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no params.yaml" in err[0]
