"""A user's own data set: a YAML beside its files, run from elsewhere; flags; positives by label; settings
chosen from the data (a known popularity answer without a user column, params.yaml repeating them)."""

import csv
import json

import numpy as np
import pytest
import yaml

from tfrec import config, evaluate
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


def write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture(scope="module")
def no_user_run(tmp_path_factory):
    """A data-only YAML over 6 items and 30 query rows without a user column, trained one epoch.

    Training counts a:6 b:5 c:4 d:3 e:2 f:1, so popularity ranks a..f as 1..6; the test
    targets a, b, d, e, f, f then rank 1, 2, 4, 5, 6, 6.
    """
    root = tmp_path_factory.mktemp("no_user")
    words = {"a": "red apple", "b": "blue boat", "c": "green cup", "d": "dark desk", "e": "easy egg", "f": "fine fork"}
    write_rows(root / "items.csv", ["item_id", "title"], list(words.items()))
    train = [(words[i].split()[1], i) for i, n in zip("abcdef", (6, 5, 4, 3, 2, 1)) for _ in range(n)]
    write_rows(root / "train.csv", ["q", "item_id"], train)
    write_rows(root / "validation.csv", ["q", "item_id"], [("apple", "a"), ("cup", "c"), ("egg", "e")])
    write_rows(root / "test.csv", ["q", "item_id"], [(words[i].split()[0], i) for i in "abdeff"])
    (root / "own.yaml").write_text(yaml.safe_dump({"data": {
        "interactions": {"path": "train.csv", "query_column": "q"}, "items": {"path": "items.csv"},
        "split": {"validation_path": "validation.csv", "test_path": "test.csv"}}}))
    job = root / "job"
    args = ["--config", str(root / "own.yaml"), "--job-dir", str(job), "--set", "train.epochs=1",
            "--set", "model.query_encoder.checkpoint=random://tiny", "--set", "eval.ks=[1, 3, 5]",
            "--set", "train.early_stopping_metric=recall@5",
            "--set", "export.enabled=false"]
    return root, job, args


def test_popularity_without_a_user_column_is_the_hand_computed_one(no_user_run, capsys):
    root, job, args = no_user_run
    assert task.main(args) == 0
    log = capsys.readouterr().out
    report = json.loads((job / "eval.json").read_text())
    pop = report["baselines"]["popularity"]
    # ranks 1, 2, 4, 5, 6, 6 over 6 test rows
    assert pop["recall@1"] == pytest.approx(1 / 6)
    assert pop["recall@3"] == pytest.approx(2 / 6)
    assert pop["recall@5"] == pytest.approx(4 / 6)
    assert pop["ndcg@3"] == pytest.approx((1 + 1 / np.log2(3)) / 6)
    assert pop["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 6) / 6)
    # chosen from the data, each logged once with its reason
    assert "tfrec: preset=default config=" in log
    assert log.count("config: retrieval.negatives=full: 6 items") == 1
    assert "config: eval.exclude_seen=false: no user ids" in log
    assert "config: eval.baselines=[popularity, bm25, content]" in log
    assert set(report["baselines"]) == {"popularity", "bm25", "content"}


def test_eval_test_max_queries_measures_every_row_on_one_seeded_sample(no_user_run, tmp_path):
    root, _, args = no_user_run
    job = tmp_path / "sampled"
    assert task.main([a if a != str(root / "job") else str(job) for a in args]
                     + ["--set", "eval.test_max_queries=3"]) == 0
    report = json.loads((job / "eval.json").read_text())
    assert report["test_queries"] == {"evaluated": 3, "of": 6}
    rows = evaluate.validation_sample(6, 3, config.build(None, str(root / "own.yaml")).train.seed)
    ranks = np.array([1, 2, 4, 5, 6, 6])[rows]  # the fixture's popularity ranks, on the sampled rows only
    pop = report["baselines"]["popularity"]
    assert pop["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert pop["recall@3"] == pytest.approx(np.mean(ranks <= 3))
    assert report["data"]["counts"]["test"] == 6  # the data section still counts every test row


def test_params_yaml_holds_the_resolved_config_and_reproduces_it(no_user_run, capsys):
    root, job, args = no_user_run
    if not (job / "eval.json").is_file():
        assert task.main(args) == 0
    params = yaml.safe_load((job / "params.yaml").read_text())
    assert params["retrieval"]["negatives"] == "full" and params["eval"]["exclude_seen"] is False
    assert params["eval"]["baselines"] == ["popularity", "bm25", "content"]
    assert (params["train"]["batch_size"], params["train"]["epochs"]) == (128, 1)  # 21 rows < 20,000; epochs set
    served = json.loads((job / "eval.json").read_text())["hybrid"]  # the choice, written back (weight 0: dense)
    assert params["retrieval"]["hybrid_fusion"] == served["fusion"]
    assert params["retrieval"]["hybrid_weight"] == (served["weight"] or 0.0)
    capsys.readouterr()
    assert task.main(["--config", str(job / "params.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == params
    # the same command again finds its own job dir's params.yaml consistent and resumes
    assert task.main(args) == 0
    assert "train: already complete" in capsys.readouterr().out


def test_a_rerun_from_params_yaml_repeats_eval_json(no_user_run, tmp_path):
    root, job, args = no_user_run
    if not (job / "eval.json").is_file():
        assert task.main(args) == 0
    again = tmp_path / "again"
    assert task.main(["--config", str(job / "params.yaml"), "--job-dir", str(again)]) == 0
    first, second = (json.loads((j / "eval.json").read_text()) for j in (job, again))
    assert (second["model"], second["baselines"], second["config_hash"]) == (
        first["model"], first["baselines"], first["config_hash"])
    assert [second["hybrid"][k] for k in ("fusion", "weight")] == [first["hybrid"][k] for k in ("fusion", "weight")]
    assert second["hybrid"]["validation"] == {} and first["hybrid"]["validation"]  # chosen once, then repeated
