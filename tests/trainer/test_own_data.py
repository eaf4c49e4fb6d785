"""A user's own data set: a YAML beside its files, run from elsewhere; flags; positives by label."""

import csv
import json

import pytest
import yaml

from tfrec import config
from tfrec.data import dataset, synthetic
from tfrec.errors import ConfigError
from trainer import task


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A folder holding the smoke data as data/*.csv and shop.yaml naming them relatively."""
    root = tmp_path_factory.mktemp("shop")
    synthetic.write_smoke(str(root / "data"))
    smoke = config.build("smoke")
    (root / "shop.yaml").write_text(yaml.safe_dump({"data": {
        "interactions": {"path": "data/interactions.csv", "query_column": "query", "user_id_column": "user_id",
                         "timestamp_column": "timestamp", "label_column": "rating", "positive_threshold": 4},
        "items": {"path": "./data/items.csv", "text_columns": smoke.data.items.text_columns,
                  "categorical_columns": ["genre"]}}}))
    return root


def test_relative_paths_resolve_against_the_yaml_and_name_the_export(shop, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.build("smoke", str(shop / "shop.yaml"))
    assert cfg.data.interactions.path == str(shop / "data" / "interactions.csv")
    assert cfg.data.items.path == str(shop / "data" / "items.csv")
    assert cfg.export.model_name == "shop"  # the file's name, not the preset's "smoke"
    assert config.build("smoke").export.model_name == "smoke"
    named = tmp_path / "other.yaml"
    named.write_text("export:\n  model_name: catalog_v2\n")
    assert config.build("smoke", str(named)).export.model_name == "catalog_v2"
    # --set paths are typed relative to where the command runs
    cfg = config.build("smoke", str(shop / "shop.yaml"), ["data.items.path=mine/items.csv"])
    assert cfg.data.items.path == str(tmp_path / "mine" / "items.csv")


def test_misspelt_flag_is_refused_by_name(capsys):
    assert task.main(["--preset", "smoke", "--epoch", "3", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown flag --epoch; did you mean --train.epochs?"
    assert task.main(["--preset", "smoke", "--jobdir", "x", "--print-config"]) == 2
    assert "did you mean --job_dir?" in capsys.readouterr().err


def test_config_key_flags_are_set_overrides(capsys):
    # Vertex AI tuning passes --<parameter_id> <value>; a key's last part or its dotted name both work.
    assert task.main(["--preset", "smoke", "--epochs", "3", "--train.learning_rate=0.5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["train"]["learning_rate"] == 0.5
    assert task.main(["--preset", "smoke", "--path", "x.csv", "--print-config"]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_positive_threshold_keeps_labels_at_or_above_it(shop):
    cfg = config.build("smoke", str(shop / "shop.yaml"))
    with open(shop / "data" / "interactions.csv", newline="") as f:
        ratings = [float(r["rating"]) for r in csv.DictReader(f)]
    data = dataset.load(cfg.data)
    below = sum(r < 4 for r in ratings)
    assert 0 < below < len(ratings)
    assert data.skipped["below_positive_threshold"] == below
    kept = [*data.train.label, *data.validation.label, *data.test.label]
    assert min(kept) >= 4
    with pytest.raises(ConfigError, match="positive_threshold.*needs data.interactions.label_column"):
        config.build("smoke", None, ["data.interactions.label_column=null", "data.interactions.positive_threshold=4"])
    with pytest.raises(ConfigError, match="ranking head"):
        config.build("smoke", str(shop / "shop.yaml"), ["ranking.weight=1"])


def test_own_data_run_from_another_folder(shop, tmp_path, monkeypatch):
    """The done-when line: shop.yaml with relative paths, run elsewhere -> export/shop/<version>."""
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job"
    assert task.main(["--preset", "smoke", "--config", str(shop / "shop.yaml"), "--job-dir", str(job),
                      "--set", "train.epochs=1", "--set", "eval.baselines=false"]) == 0
    assert (job / "export" / "shop" / "1" / "saved_model.pb").is_file()
    params = yaml.safe_load((job / "params.yaml").read_text())
    assert params["data"]["interactions"]["path"] == str(shop / "data" / "interactions.csv")
    assert params["data"]["items"]["path"] == str(shop / "data" / "items.csv")
    report = json.loads((job / "eval.json").read_text())
    assert report["data"]["skipped"]["below_positive_threshold"] > 0
    # params.yaml repeats the run from anywhere: it is a complete config on its own
    assert config.build("smoke", str(job / "params.yaml")).data.items.path == str(shop / "data" / "items.csv")
