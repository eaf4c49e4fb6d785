"""The id_sequence, content and cold-item baselines."""

import numpy as np
import pytest

from tfrec import baselines
from tfrec import config
from tfrec.data import dataset, pipeline
from tests.tfrec.data.test_history_items import history_cfg


def test_content_queries_by_hand(tmp_path):
    # Item text encodings (rows 0..3): [1,0], [0,2], [3,0], [0,0]-> normalised [1,0], [0,1], [1,0], [0,0].
    # u0's test history is [i3, i2] -> rows [2, 1] -> mean of [1,0] and [0,1] = [0.5, 0.5].
    data = dataset.load(history_cfg(tmp_path).data)
    encodings = np.array([[1, 0], [0, 2], [3, 0], [0, 0]], np.float32)
    q, items = baselines.content_embeddings(data, "test", encodings)
    np.testing.assert_allclose(q, [[0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(items[:3], [[1, 0], [0, 1], [1, 0]], atol=1e-6)


def test_id_sequence_learns_a_next_item_rule(tmp_path):
    # Every user walks the cycle i1 -> i2 -> i3 -> i4 -> i1 (tests/tfrec/data/test_dataset.rows), so with one
    # history item the next item is a function of the last one: 18 training pairs, 4 of each transition or so.
    # Trained, the ID model ranks every test user's next item first: recall@1 = 1 for all 6 (by chance 1/4).
    cfg = history_cfg(tmp_path, n_users=6, per_user=6, depth=1, **{
        "train.epochs": 20, "train.batch_size": 4, "train.learning_rate": 0.01, "retrieval.negatives": "full",
        "train.early_stopping_metric": "recall@1", "train.early_stopping_patience": 20, "eval.ks": [1, 4]})
    data = dataset.load(cfg.data)
    result = baselines.id_sequence_baseline(cfg, data, "test", [1, 4])
    assert set(result) == {"recall@1", "recall@4", "ndcg@1", "ndcg@4", "mrr"}
    assert result["recall@1"] == pytest.approx(1.0) and result["mrr"] == pytest.approx(1.0)


def test_cold_section_counts_cold_targets(tmp_path):
    data = dataset.load(history_cfg(tmp_path, n_users=4, per_user=4, depth=3).data)
    warm = dataset.hold_out_cold_items(data, 0.25, seed=0)
    cold = warm.cold_items
    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(len(warm.test), 2)), rng.normal(size=(4, 2))
    cfg = history_cfg(tmp_path, n_users=4, per_user=4, depth=3, **{"eval.ks": [1, 4], "eval.exclude_seen": False})
    cache = pipeline.TextCache(data.catalog.texts, lambda texts: rng.normal(size=(len(texts), 3)))
    section = baselines.cold_items_section(cfg, warm, q, items, cache)
    # Each of the 4 users' test item is a different one of the 4 items, so one test row has the cold target.
    assert section["items"] == 1 and section["targets"] == 1
    assert set(section["baselines"]) == {"popularity", "content"} and "recall@4" in section["model"]
    assert section["baselines"]["popularity"]["recall@1"] == 0.0  # a cold item has no training count


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("queries", ["text", "history"])
def test_content_baseline_searches_with_the_untrained_encoder(tmp_path, monkeypatch, queries):
    """Text queries: the query's own embedding; history queries: the mean of its items' (content_embeddings).
    Either way with the run's checkpoint as it comes, untrained."""
    from tfrec import evaluate
    from tfrec.encoders import text

    cfg = history_cfg(tmp_path, n_users=6, per_user=5, depth=3, **{"eval.ks": [1, 4]})
    if queries == "text":
        cfg = config.updated(cfg, {"data.interactions.query_column": "query",
                                   "data.interactions.query_history_items": None})
    data = dataset.load(cfg.data)
    encoder = text.BertTextEncoder("random://tiny", 16, "mean", 0, seed=0)
    items = encoder.encode_texts(data.catalog.texts)
    if queries == "text":
        want_q, want_items = _unit(encoder.encode_texts(data.test.query_text)), _unit(items)
    else:
        want_q, want_items = baselines.content_embeddings(data, "test", items)
    want = evaluate.evaluate_embeddings(want_q, want_items, data, "test", [1, 4])
    assert baselines.content_baseline(cfg, data, "test", [1, 4], encoder=encoder) == pytest.approx(want)

    # The run's frozen encoder outputs are read, not encoded again (this encoder would fail if it were called).
    caches = {"item_cache": pipeline.TextCache(data.catalog.texts, encoder.encode_texts),
              "query_cache": pipeline.TextCache(data.test.query_text, encoder.encode_texts)}
    assert baselines.content_baseline(cfg, data, "test", [1, 4], encoder=object(), **caches) == pytest.approx(want)

    built = []  # without an encoder: the run's checkpoint, frozen, as configured
    monkeypatch.setattr(baselines, "BertTextEncoder", lambda *args, **kw: built.append((args, kw)) or encoder)
    assert baselines.content_baseline(cfg, data, "test", [1, 4]) == pytest.approx(want)
    q = cfg.model.query_encoder
    assert built[0][0] == (q.checkpoint, q.max_length, q.pooling, 0)


def test_content_baseline_needs_item_text(tmp_path):
    import dataclasses

    from tfrec import baseline_runs

    data = dataset.load(history_cfg(tmp_path).data)
    content = baseline_runs.BASELINES["content"]
    assert baseline_runs.unavailable(content, data, has_users=True) is None
    textless = dataclasses.replace(data, catalog=dataclasses.replace(data.catalog, texts=[""] * len(data.catalog)))
    assert baseline_runs.unavailable(content, textless, has_users=True) == (
        "it needs item text (data.items.text_columns)")
