"""Settings chosen from the data (tfrec.config.resolve): each shape of data, explicit values, refusals."""

import pytest
import yaml

from tfrec import config
from tfrec.config import resolve
from tfrec.config.resolve import DataSummary
from tfrec.errors import ConfigError


@pytest.fixture
def own_yaml(tmp_path):
    """A data-only YAML: text queries, no user, no timestamp."""
    f = tmp_path / "shop.yaml"
    f.write_text("data:\n  interactions:\n    path: clicks.csv\n    query_column: q\n  items:\n    path: items.csv\n")
    return f


def data_only(tmp_path, interactions: dict) -> config.Config:
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"data": {"interactions": {"path": "i.csv", **interactions},
                                          "items": {"path": "c.csv"}}}))
    return config.build(config_file=str(f))


def chosen(cfg, summary) -> dict:
    cfg, _ = resolve.resolve_data(cfg, summary)
    return {"batch": cfg.train.batch_size, "epochs": cfg.train.epochs, "negatives": cfg.retrieval.negatives,
            "baselines": cfg.eval.baselines, "exclude_seen": cfg.eval.exclude_seen}


def test_a_config_without_preset_starts_from_the_base(own_yaml):
    cfg = config.build(config_file=str(own_yaml))
    assert cfg.name == "default"
    assert resolve.pending(cfg) == ["model.embedding_dim", "train.batch_size", "train.epochs", "retrieval.negatives",
                                    "eval.baselines", "eval.exclude_seen"]
    assert cfg.data.split.method == "random"  # no timestamp column
    assert config.build().name == "movielens"  # no arguments: the demo



def test_a_preset_keeps_its_choices_for_its_own_data_only(own_yaml, tmp_path):
    tweak = tmp_path / "tweak.yaml"
    tweak.write_text("train:\n  learning_rate: 0.001\n")
    same_data = config.build("movielens", str(tweak))
    assert same_data.eval.exclude_seen and same_data.retrieval.negatives == "full" and resolve.pending(same_data) == []
    # a file naming its own interactions is other data: what MovieLens's tuning chose is chosen again from it
    other = config.build("movielens", str(own_yaml))
    assert not other.eval.exclude_seen and other.eval.baselines is True and other.data.split.method == "random"
    assert resolve.pending(other) == resolve.pending(config.build(config_file=str(own_yaml)))[1:]  # not the width
    assert other.model.history_encoder == "attention" and other.model.dropout == 0.2  # the model settings stay
    assert config.build("smoke", str(own_yaml)).model.embedding_dim == 16  # the preset's width too


def test_text_only_small_catalog(tmp_path):
    # 1,179 items <= 5,000: full softmax; 18,113 rows < 20,000: batch 128, 20 epochs; text, no users or history.
    cfg = data_only(tmp_path, {"query_column": "q"})
    s = DataSummary(items=1179, train_rows=18113, users=0, has_query_text=True)
    assert chosen(cfg, s) == {"batch": 128, "epochs": 20, "negatives": "full",
                              "baselines": ["popularity", "bm25", "content"], "exclude_seen": False}


def test_text_only_large_catalog(tmp_path):
    # 100,000 items > 5,000: mixed; 800,000 rows >= 500,000: batch 1,024, 2 epochs.
    cfg = data_only(tmp_path, {"query_column": "q"})
    s = DataSummary(items=100_000, train_rows=800_000, users=0, has_query_text=True)
    assert chosen(cfg, s) == {"batch": 1024, "epochs": 2, "negatives": "mixed",
                              "baselines": ["popularity", "bm25", "content"], "exclude_seen": False}
    _, lines = resolve.resolve_data(cfg, s)
    assert ("retrieval.negatives=mixed: 100,000 items; full softmax would score every item each step "
            "(1,024 x 100,000 x 64 = 6.6e+09 multiply-adds per step)") in lines[3]
    assert lines[0] == "model.embedding_dim=64: the default width"  # no encoder width in the summary
    assert lines[1] == "train.batch_size=1024: 800,000 training rows (500,000 or more)"
    # 800,000 / 1,024 = 781.25 -> 782 steps per epoch
    assert lines[2] == ("train.epochs=2: 800,000 training rows (500,000 or more, a third epoch adds little at this "
                        "size): 782 steps per epoch at batch 1,024; early stopping after 3 epochs without a better "
                        "validation metric")


def test_embedding_dim_is_the_encoders_width_where_the_start_is_then_content_exactly(own_yaml, tmp_path):
    # The default encoder is pretrained (MiniLM, 384 wide) and reads query and item text: the text skip is on.
    cfg = config.build(config_file=str(own_yaml))
    assert cfg.model.text_skip == "on" and resolve.encoder_width(cfg.model.query_encoder.checkpoint) == 384

    def width(config_, items, encoder_width=384):
        resolved, lines = resolve.resolve_data(config_, DataSummary(items=items, train_rows=1000, has_query_text=True,
                                                                    encoder_width=encoder_width))
        return resolved.model.embedding_dim, lines[0]

    dim, line = width(cfg, 20_000)  # 20,000 x 384 x 4 bytes = 30.7 MB
    assert dim == 384 and line.startswith("model.embedding_dim=384: the encoder's width") and "30.7 MB" in line
    dim, line = width(cfg, 20_001)  # over 20,000 items: 64, the index would be 20,001 x 384 x 4 = 31 MB
    assert dim == 64 and "20,001 items (over 20,000) at the encoder's 384 would make the index 31 MB" in line
    assert width(cfg, 100, encoder_width=None)[0] == 64  # a width not known here: the default
    assert width(cfg, 100, encoder_width=32)[0] == 64  # narrower than the default: the default covers it
    assert width(config.build(config_file=str(own_yaml), sets=["model.text_skip=off"]), 100)[0] == 64
    assert width(config.build(config_file=str(own_yaml), sets=["model.embedding_dim=128"]), 100)[0] == 128
    history = data_only(tmp_path, {"query_history_items": 5, "user_id_column": "u", "timestamp_column": "t"})
    assert history.model.text_skip == "off"
    assert width(history, 100)[0] == 64  # history-built queries: no text skip, as before


@pytest.mark.parametrize("rows, batch, epochs", [(19_999, 128, 20), (20_000, 256, 10), (199_999, 256, 10),
                                                 (200_000, 1024, 3), (499_999, 1024, 3), (500_000, 1024, 2),
                                                 (10**7, 1024, 2)])
def test_batch_and_epochs_by_training_rows(tmp_path, rows, batch, epochs):
    # Tiers: under 20,000 -> 128 x 20; under 200,000 -> 256 x 10; under 500,000 -> 1,024 x 3; then 1,024 x 2.
    cfg = data_only(tmp_path, {"query_column": "q"})
    got = chosen(cfg, DataSummary(items=100_000, train_rows=rows, has_query_text=True))
    assert (got["batch"], got["epochs"]) == (batch, epochs)


def test_history_only(tmp_path):
    # MovieLens-like: 1,682 items, 97,000 rows (< 200,000: batch 256, 10 epochs), users; no query text.
    cfg = data_only(tmp_path, {"query_history_items": 5, "user_id_column": "u", "timestamp_column": "t"})
    assert cfg.data.split.method == "leave_last"
    s = DataSummary(items=1682, train_rows=97_000, users=943, has_history=True)
    assert chosen(cfg, s) == {"batch": 256, "epochs": 10, "negatives": "full",
                              "baselines": ["popularity", "content", "id_sequence", "id_two_tower"],
                              "exclude_seen": False}


def test_text_and_history_with_users(tmp_path):
    cfg = data_only(tmp_path, {"query_column": "q", "query_history_items": 5, "user_id_column": "u",
                               "timestamp_column": "t"})
    s = DataSummary(items=5001, train_rows=199_999, users=10, has_query_text=True, has_history=True)
    assert chosen(cfg, s) == {"batch": 256, "epochs": 10, "negatives": "mixed",
                              "baselines": ["popularity", "bm25", "content", "id_sequence", "id_two_tower"],
                              "exclude_seen": False}


def test_streamed_rows_get_in_batch_negatives_and_no_in_memory_baselines():
    s = DataSummary(items=100, train_rows=10**7, users=5, has_query_text=True, streaming=True)
    got = chosen(config.Config(), s)  # nothing explicit
    assert (got["negatives"], got["baselines"]) == ("in_batch", ["popularity", "bm25", "content"])


def test_split_choice_from_the_columns(tmp_path):
    assert data_only(tmp_path, {"query_column": "q", "timestamp_column": "t"}).data.split.method == "time"
    f = tmp_path / "files.yaml"
    f.write_text("data:\n  interactions: {path: a.csv, query_column: q}\n  items: {path: c.csv}\n"
                 "  split: {validation_path: v.csv, test_path: t.csv}\n")
    assert config.build(config_file=str(f)).data.split.method == "files"
    # an explicit split wins; a random split needs no timestamps
    assert data_only(tmp_path, {"query_column": "q", "timestamp_column": "t"}).data.split.method == "time"
    cfg = config.build(config_file=str(f), sets=["data.split.method=random", "data.split.validation_path=",
                                                 "data.split.test_path="])
    assert cfg.data.split.method == "random"


def test_explicit_values_win(own_yaml):
    cfg = config.build(config_file=str(own_yaml), sets=["retrieval.negatives=full", "train.batch_size=64",
                                                         "eval.baselines=[popularity]"])
    s = DataSummary(items=100_000, train_rows=800_000, has_query_text=True)
    got = chosen(cfg, s)
    assert (got["negatives"], got["batch"], got["baselines"]) == ("full", 64, ["popularity"])
    assert got["epochs"] == 2  # still chosen (800,000 rows: 2 epochs): nothing named it
    # a key in the user's YAML is explicit too, even when it equals the base default
    own_yaml.write_text(own_yaml.read_text() + "train:\n  epochs: 10\n")
    assert chosen(config.build(config_file=str(own_yaml)), s)["epochs"] == 10


@pytest.mark.parametrize("preset", ["movielens", "movielens_multitask", "movielens_tfrs_protocol", "smoke"])
def test_presets_are_left_untouched(preset):
    cfg = config.build(preset)
    assert resolve.pending(cfg) == []
    for s in (DataSummary(items=100_000, train_rows=10**6, has_query_text=True),
              DataSummary(items=50, train_rows=100, users=3, has_history=True)):
        again, lines = resolve.resolve_data(cfg, s)
        assert lines == [] and config.to_dict(again) == config.to_dict(cfg)


def test_resolved_params_yaml_rebuilds_the_same_config(own_yaml, tmp_path):
    cfg = config.build(config_file=str(own_yaml))
    resolved, _ = resolve.resolve_data(cfg, DataSummary(items=100_000, train_rows=800_000, has_query_text=True))
    params = tmp_path / "params.yaml"
    params.write_text(config.to_yaml(resolved))
    written = yaml.safe_load(params.read_text())
    assert written["retrieval"]["negatives"] == "mixed" and written["train"]["batch_size"] == 1024
    assert written["eval"]["baselines"] == ["popularity", "bm25", "content"]
    assert "explicit" not in written
    again = config.build(config_file=str(params))
    assert resolve.pending(again) == []
    assert config.to_dict(again) == config.to_dict(resolved)
    assert config.config_hash(again) == config.config_hash(resolved)


def test_baseline_needs_cover_every_registered_baseline():
    from tfrec.baseline_runs import BASELINES

    assert list(resolve.BASELINE_NEEDS) == list(BASELINES)


# ------------------------------------------------------------------ refusals
def test_exclude_seen_without_users_is_refused(own_yaml):
    with pytest.raises(ConfigError, match="'eval.exclude_seen': needs data.interactions.user_id_column"):
        config.build(config_file=str(own_yaml), sets=["eval.exclude_seen=true"])
    # a user column that holds one user: refused once the data shows it
    cfg = config.build(config_file=str(own_yaml), sets=["data.interactions.user_id_column=u",
                                                         "eval.exclude_seen=true"])
    with pytest.raises(ConfigError, match="eval.exclude_seen.*1 distinct user"):
        resolve.check_data(cfg, DataSummary(items=10, train_rows=100, users=1, has_query_text=True))
    resolve.check_data(cfg, DataSummary(items=10, train_rows=100, users=2, has_query_text=True))


@pytest.mark.parametrize("sets, key, words", [
    (["eval.baselines=[id_two_tower]"], "eval.baselines", "id_two_tower needs data.interactions.user_id_column"),
    (["eval.baselines=[id_sequence]"], "eval.baselines", "id_sequence needs data.interactions.query_history_items"),
    (["data.interactions.query_column=null", "eval.baselines=[bm25]", "data.interactions.query_history_items=3",
      "data.interactions.user_id_column=u", "data.interactions.timestamp_column=t"],
     "eval.baselines", "bm25 needs data.interactions.query_column"),
    (["data.interactions.query_history_items=3", "data.interactions.user_id_column=u"],
     "data.interactions.timestamp_column", "is required when queries are built from history"),
    (["data.split.method=leave_last", "data.interactions.user_id_column=u"], "data.interactions.timestamp_column",
     "required by data.split.method=leave_last"),
    (["ranking.weight=1"], "data.interactions.label_column", "required when ranking.weight > 0"),
    (["data.interactions.positive_threshold=4"], "data.interactions.positive_threshold", "needs data.interactions"),
])
def test_settings_that_assume_missing_columns_are_refused(own_yaml, sets, key, words):
    with pytest.raises(ConfigError) as e:
        config.build(config_file=str(own_yaml), sets=sets)
    assert str(e.value).startswith(f"config key '{key}': ") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_binary_ranking_threshold_outside_the_labels_is_refused_at_load(own_yaml):
    cfg = config.build(config_file=str(own_yaml), sets=["data.interactions.label_column=clicked", "ranking.weight=1",
                                                         "ranking.objective=binary"])
    clicks = DataSummary(items=10, train_rows=100, has_query_text=True, label_range=(0.0, 1.0))
    with pytest.raises(ConfigError, match="'ranking.positive_threshold': 4 leaves one class: .* from 0 to 1"):
        resolve.check_data(cfg, clicks)
    resolve.check_data(config.override(cfg, ["ranking.positive_threshold=1"]), clicks)


def test_content_named_without_item_text_is_refused_at_load(own_yaml):
    cfg = config.build(config_file=str(own_yaml), sets=["eval.baselines=[popularity, content]"])
    with pytest.raises(ConfigError, match="content needs item text"):
        resolve.check_data(cfg, DataSummary(items=10, train_rows=100, has_query_text=True, has_item_text=False))
    # left to the data, content is simply not chosen
    assert chosen(config.build(config_file=str(own_yaml)),
                  DataSummary(items=10, train_rows=100, has_query_text=True, has_item_text=False)
                  )["baselines"] == ["popularity", "bm25"]
