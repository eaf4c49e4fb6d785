"""tfrec/baseline_guard.py: the trained choice is served only where validation shows it beats the exact baselines."""

import numpy as np
import pytest

from tfrec.baseline_guard import keep_or_baseline, per_query, sign_test


def test_per_query_values_from_ranks():
    ranks = np.array([1, 2, 11])
    np.testing.assert_array_equal(per_query(ranks, "recall@10"), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(per_query(ranks, "ndcg@10"), [1.0, 1 / np.log2(3), 0.0])
    np.testing.assert_allclose(per_query(ranks, "mrr"), [1.0, 0.5, 1 / 11])


def test_sign_test_counts_won_and_lost_queries():
    # 5 won, none lost: 1/2^5; 4 won: 1/2^4; 6 won 1 lost: (C(7,6) + C(7,7)) / 2^7 = 8/128; none differ: 1.
    assert sign_test(np.ones(7), np.array([0, 0, 0, 0, 0, 1, 1.0])) == (5, 0, pytest.approx(1 / 32))
    assert sign_test(np.ones(4), np.zeros(4)) == (4, 0, pytest.approx(1 / 16))
    assert sign_test(np.array([1, 1, 1, 1, 1, 1, 0.0]), np.array([0, 0, 0, 0, 0, 0, 1.0]))[2] == pytest.approx(1 / 16)
    assert sign_test(np.ones(3), np.ones(3)) == (0, 0, 1.0)


BM25 = np.array([1, 2, 3, 12, 12, 12, 12, 12, 12, 12, 12, 12, 1, 1, 1, 1, 1, 1, 1, 1])  # 20 queries, 9 past 10


def with_found(ranks: np.ndarray, queries: int) -> np.ndarray:
    """``ranks`` with the first ``queries`` of the targets past 10 moved to rank 1."""
    out = ranks.copy()
    out[np.flatnonzero(out > 10)[:queries]] = 1
    return out


def test_a_tie_or_a_small_gain_serves_the_baseline():
    assert keep_or_baseline("recall@10", BM25.copy(), {"bm25": BM25})[0] == "bm25"  # equal: no query won
    # 4 queries won, none lost: p = 1/16, not below 0.05.
    served, why = keep_or_baseline("recall@10", with_found(BM25, 4), {"bm25": BM25})
    assert served == "bm25" and "higher on 4 queries, lower on 0 (p=0.062)" in why


def test_a_large_gain_keeps_the_trained_choice():
    # 5 won, none lost: p = 1/32 < 0.05, and mrr higher.
    assert keep_or_baseline("recall@10", with_found(BM25, 5), {"bm25": BM25})[0] is None
    assert keep_or_baseline("ndcg@10", with_found(BM25, 9), {"bm25": BM25})[0] is None


def test_a_gain_on_the_metric_with_a_loss_on_mrr_serves_the_baseline():
    # 6 targets move from 12 to 10 (recall@10 won on 6 queries, p = 1/64), but the 8 at rank 1 drop to 5:
    # mrr falls by 8 x (1 - 1/5) / 20 = 0.32 and gains 6 x (1/10 - 1/12) / 20 = 0.005.
    candidate = BM25.copy()
    candidate[np.flatnonzero(candidate == 12)[:6]] = 10
    candidate[12:] = 5
    served, why = keep_or_baseline("recall@10", candidate, {"bm25": BM25})
    assert served == "bm25" and "lower on 0 (p=0.016)" in why


def test_every_baseline_must_be_beaten_and_the_best_one_is_served():
    content = with_found(BM25, 3)  # better than bm25 on recall@10 (by 3 queries)
    # 9 found: 6 queries won against content, 9 against bm25, none lost, mrr higher: kept.
    assert keep_or_baseline("recall@10", with_found(BM25, 9), {"content": content, "bm25": BM25})[0] is None
    # 7 found: 4 more than content (not enough), 7 more than bm25: content, the better baseline, is served.
    served, why = keep_or_baseline("recall@10", with_found(BM25, 7), {"content": content, "bm25": BM25})
    assert served == "content" and why.startswith("serving content") and "bm25" not in why
    # Neither beaten, bm25 the better one on validation: bm25.
    assert keep_or_baseline("recall@10", BM25, {"content": np.full(20, 12), "bm25": BM25})[0] == "bm25"
    # The baselines tie: content, listed first.
    assert keep_or_baseline("recall@10", BM25, {"content": BM25.copy(), "bm25": BM25})[0] == "content"
