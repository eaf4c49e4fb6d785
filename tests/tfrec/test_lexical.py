"""The bm25 baseline: BM25 scores worked out by hand, its ranking rule, and its place in eval.json."""

import dataclasses
import math

import numpy as np
import pytest

from tfrec import baseline_runs, baselines, evaluate, lexical
from tfrec import config as config_lib
from tfrec.data import dataset
from tests.helpers.bm25_reference import dense_scores

DOCS = ["Red shoe", "red red hat", "blue shoe, shoe box"]  # lengths 2, 3, 4: avgdl 3


def by_hand(tf_, length, df):
    """One term's BM25 weight in a 3-document collection with avgdl 3 (k1 1.2, b 0.75)."""
    idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
    return idf * tf_ * 2.2 / (tf_ + 1.2 * (0.25 + 0.75 * length / 3))


def test_scores_by_hand():
    index = lexical.BM25(DOCS)
    got = dense_scores(index, ["RED shoe!", "hat hat", "nothing here"])
    red = [by_hand(1, 2, 2), by_hand(2, 3, 2), 0.0]
    shoe = [by_hand(1, 2, 2), 0.0, by_hand(2, 4, 2)]
    np.testing.assert_allclose(got[0], np.add(red, shoe))  # words lowercased, punctuation dropped
    np.testing.assert_allclose(got[1], [0.0, 2 * by_hand(1, 3, 1), 0.0])  # a word typed twice counts twice
    np.testing.assert_array_equal(got[2], [0.0, 0.0, 0.0])  # no catalog word: no score
    assert by_hand(2, 3, 2) > by_hand(1, 2, 2)  # "red red hat" leads on "red", though longer


def test_ranks_break_ties_by_the_tie_order_and_leave_exclusions_out():
    index = lexical.BM25(DOCS)
    tie = np.array([0, 1, 2])  # item 2 first among equal scores, then 1, then 0
    # "red shoe" scores 0 > 1 > 2 (1.09, 0.65, 0.59: test_scores_by_hand's weights); "hat" picks 1;
    # "nothing" ties all three, so the tie order decides.
    ranks = index.ranks(["red shoe", "red shoe", "hat", "nothing", "nothing", "red shoe"],
                        np.array([2, 1, 1, 0, 2, 2]), tie, [[], [], [], [], [], [0, 2]])
    # The last query leaves item 0 out (and keeps its listed target, 2): only item 1 is still ahead.
    assert ranks.tolist() == [3, 2, 1, 3, 1, 2]


def test_ranks_equal_a_full_sort():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.choice(vocab, rng.integers(1, 5))) for _ in range(40)]
    queries = [" ".join(rng.choice(vocab + ["unknown"], rng.integers(1, 4))) for _ in range(25)]
    targets = rng.integers(0, 40, 25)
    tie = rng.permutation(40)
    exclude = [rng.choice(40, rng.integers(0, 6), replace=False) for _ in range(25)]
    index = lexical.BM25(texts)
    scores = dense_scores(index, queries)
    want = []
    for q, t in enumerate(targets):
        keep = np.setdiff1d(np.arange(40), np.setdiff1d(exclude[q], [t]))
        ahead = (scores[q, keep] > scores[q, t]) | ((scores[q, keep] == scores[q, t]) & (tie[keep] > tie[t]))
        want.append(1 + int(ahead.sum()))
    assert index.ranks(queries, targets, tie, exclude).tolist() == want


@pytest.fixture
def smoke(tmp_path):
    cfg = config_lib.build("smoke", None, ["eval.ks=[1, 10]"])
    return cfg, dataset.load(cfg.data, base_dir=str(tmp_path))


def test_bm25_baseline_reports_the_model_metrics_and_needs_query_text(smoke):
    cfg, data = smoke
    result = baselines.bm25_baseline(data, "test", [1, 10])
    assert set(result) == set(evaluate.popularity_baseline(data, "test", [1, 10]))
    # Half the smoke query words are synonyms no title uses: BM25 finds many targets, not all.
    assert 0.3 < result["recall@10"] < 0.95
    bm25 = baseline_runs.BASELINES["bm25"]
    assert baseline_runs.unavailable(bm25, data, has_users=True, has_query_text=True) is None
    assert baseline_runs.unavailable(bm25, data, has_users=True, has_query_text=False) == (
        "it needs query text (data.interactions.query_column)")


def test_cold_section_has_bm25_for_text_queries(smoke):
    cfg, data = smoke
    warm = dataset.hold_out_cold_items(data, 0.2, seed=0)
    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(len(warm.test), 4)), rng.normal(size=(len(warm.catalog), 4))
    section = baselines.cold_items_section(cfg, warm, q, items, None)
    assert section["targets"] > 0 and set(section["baselines"]) == {"popularity", "bm25"}
    cold_rows = np.flatnonzero(np.isin([warm.catalog.position[i] for i in warm.test.item_id], warm.cold_items))
    sub = dataclasses.replace(warm, test=warm.test.take(cold_rows))
    assert section["baselines"]["bm25"] == baselines.bm25_baseline(sub, "test", cfg.eval.ks)
    assert section["baselines"]["bm25"]["recall@10"] > section["baselines"]["popularity"]["recall@10"] == 0.0
