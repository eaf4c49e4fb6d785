"""Hybrid search: candidates joined and fused by hand, the weight validation picks, save/reload, core ops only."""

import typing

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfrec import config, evaluate, hybrid, lexical
from tfrec.index import BruteForceIndex, IVFIndex
from tfrec.index.hybrid import FUSIONS, HybridIndex, fuse
from tfrec.lexical_graph import LexicalScorer

# Dense scores for q = [1, 0]: 1, 0.9, 0, -1 (min-max: 1, 0.95, 0.5, 0).
ITEMS = np.array([[1.0, 0.0], [0.9, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
IDS = ["a", "b", "c", "d"]
TEXTS = ["red shoe", "blue hat", "green sock", "red sock"]  # "sock": c and d, equal BM25 (min-max 1)


def make(weight, k=2):
    return HybridIndex(BruteForceIndex(ITEMS, IDS, k), LexicalScorer(lexical.BM25(TEXTS)), ITEMS, IDS, weight)


@pytest.mark.parametrize("weight, want", [
    (0.0, ["a", "b"]),   # fused 1, 0.95, 0.5, 0: dense order
    (0.3, ["a", "b"]),   # 0.7, 0.665, 0.65, 0.3
    (0.4, ["c", "a"]),   # 0.6, 0.57, 0.7, 0.4
    (0.6, ["c", "d"]),   # 0.4, 0.38, 0.8, 0.6
])
def test_fused_top_k_worked_out_by_hand(weight, want):
    scores, ids = make(weight).search_hybrid(tf.constant([[1.0, 0.0]]), tf.constant(["sock"]))
    assert [i.decode() for i in ids.numpy()[0]] == want
    if weight == 0.6:
        np.testing.assert_allclose(scores.numpy()[0], [0.8, 0.6], rtol=1e-6)


def test_exclusions_leave_both_sides_and_change_the_candidates():
    # c excluded: candidates a, b (dense) and d (lexical); dense min-max 1, 0.95, 0 -> fused 0.4, 0.38, 0.6.
    scores, ids = make(0.6).search_hybrid(tf.constant([[1.0, 0.0]]), tf.constant(["sock"]), tf.constant([["c", ""]]))
    assert [i.decode() for i in ids.numpy()[0]] == ["d", "a"]
    np.testing.assert_allclose(scores.numpy()[0], [0.6, 0.4], rtol=1e-6)


def test_padding_of_one_query_leaves_the_next_querys_candidates_alone():
    # Query 0 excludes b ("" pads its row); query 1 excludes nothing. Both want a, b by dense score: a, the first
    # item of the tie order, stays a candidate of query 1 whatever query 0's padding.
    _, ids = make(0.0).search_hybrid(tf.constant([[1.0, 0.0], [1.0, 0.0]]), tf.constant(["", ""]),
                                     tf.constant([["b", ""], ["", ""]]))
    assert [[i.decode() for i in row] for row in ids.numpy()] == [["a", "c"], ["a", "b"]]


def test_empty_text_serves_the_dense_order():
    _, ids = make(0.9).search_hybrid(tf.constant([[1.0, 0.0]]), tf.constant([""]))
    assert [i.decode() for i in ids.numpy()[0]] == ["a", "b"]


def test_fuse_masks_invalid_and_constant_rows():
    got = fuse(tf.constant([[2.0, 2.0, 5.0]]), tf.constant([[1.0, 3.0, 0.0]]), tf.constant([[True, True, False]]),
               0.5).numpy()
    np.testing.assert_allclose(got[0, :2], [0.0, 0.5])  # dense equal -> 0; lexical 1 -> 0, 3 -> 1
    assert got[0, 2] == -np.inf


@pytest.mark.parametrize("weight, want", [
    (0.01, ["a", "b"]),  # a .99/61 = .01623, b .99/62 = .01597, c .99/63 + .01/61 = .01588, d .99/64 + .01/61
    (0.1, ["c", "d"]),   # c .9/63 + .1/61 = .01593, d .9/64 + .1/61 = .01570, a .9/61 = .01475, b .9/62
])
def test_reciprocal_rank_fusion_worked_out_by_hand(weight, want):
    # Dense ranks a 1, b 2, c 3, d 4; c and d share BM25 rank 1 ("sock"), a and b add nothing.
    index = HybridIndex(BruteForceIndex(ITEMS, IDS, 2), LexicalScorer(lexical.BM25(TEXTS)), ITEMS, IDS, weight,
                        "reciprocal_rank")
    _, ids = index.search_hybrid(tf.constant([[1.0, 0.0]]), tf.constant(["sock"]))
    assert [i.decode() for i in ids.numpy()[0]] == want


def test_equal_fused_scores_follow_the_tie_order():
    # Weight 1, "sock": c and d tie; a tie order putting d first serves d first, and the fill (the first
    # k + e items of the tie order: d, b) is what follows: a and b both score 0, b is before a.
    scorer = LexicalScorer(lexical.BM25(TEXTS), tie_order=[0, 2, 1, 3])
    _, ids = HybridIndex(BruteForceIndex(ITEMS, IDS, 3), scorer, ITEMS, IDS, 1.0).search_hybrid(
        tf.constant([[1.0, 0.0]]), tf.constant(["sock"]))
    assert [i.decode() for i in ids.numpy()[0]] == ["d", "c", "b"]


def ranks_by_choice(queries, texts, targets, scorer=None):
    index = HybridIndex(BruteForceIndex(ITEMS_BIG, IDS_BIG, 10), scorer or LexicalScorer(lexical.BM25(TEXTS_BIG)),
                        ITEMS_BIG, IDS_BIG, 0.0)
    dense = evaluate.target_ranks(queries, ITEMS_BIG, targets, None)
    return hybrid.fused_ranks(index, queries, texts, targets, None, dense)


def metrics_by_choice(queries, texts, targets):
    return {c: evaluate.metrics_from_ranks(r, [10]) for c, r in ranks_by_choice(queries, texts, targets).items()}


RNG = np.random.default_rng(7)
ITEMS_BIG = RNG.normal(size=[50, 8]).astype(np.float32)
IDS_BIG = [f"i{j}" for j in range(50)]
TEXTS_BIG = [f"word{j} common" for j in range(50)]


def test_choice_on_lexical_only_and_dense_only_data():
    targets = RNG.integers(0, 50, 40)
    noise = RNG.normal(size=[40, 8]).astype(np.float32)
    # Lexical-only: the text names the target, the embedding is noise -> a lexical weight wins, dense is chance.
    by_choice = metrics_by_choice(noise, [f"word{t}" for t in targets], targets)
    minmax, rrf = "minmax_weighted_sum", "reciprocal_rank"
    assert by_choice[minmax, 1.0]["recall@10"] == 1.0 and by_choice[minmax, 0.0]["recall@10"] < 0.6
    # Min-max: the target scores >= w, any other candidate <= 1 - w: first for every query from 0.6 up, not at 0.4.
    assert by_choice[minmax, 0.6]["mrr"] == 1.0 and by_choice[minmax, 0.4]["recall@10"] < 1.0
    # Reciprocal rank over c <= 30 candidates: the target gets >= w / 61 + (1 - w) / 90, another <= (1 - w) / 61,
    # so from w = 0.3 on (0.3 / 61 + 0.7 / 90 = .0127 > 0.7 / 61 = .0115) every target is first.
    assert by_choice[rrf, 0.3]["mrr"] == 1.0
    # Both reach recall@10 = mrr = 1 up to weight 1: reciprocal rank over the longer run of weights, its middle.
    run = [w for w in hybrid.WEIGHTS if by_choice[rrf, w]["mrr"] == 1.0]
    assert run[0] <= 0.3 and run[-1] == 1.0 and by_choice[minmax, 0.4]["mrr"] < 1.0
    assert hybrid.choose("auto", "recall@10", by_choice)[0] == (rrf, run[(len(run) - 1) // 2])
    # Dense-only: the embedding is the target's, the text says nothing -> auto keeps dense only.
    by_choice = metrics_by_choice(ITEMS_BIG[targets] * 10, ["common"] * 40, targets)
    assert by_choice[minmax, 0.0]["recall@10"] == 1.0
    assert hybrid.choose("auto", "recall@10", by_choice)[0] is None
    # on: the best above 0. Both fusions keep the dense order from 0.1 to 0.99 (11 weights; at 1 every item ties):
    # the first fusion listed, the middle of that run.
    assert hybrid.choose("on", "recall@10", by_choice)[0] == (minmax, 0.6)


def test_plateau_is_the_longest_run_of_consecutive_weights():
    assert hybrid.plateau([0.1, 0.3, 0.4, 0.5, 0.9]) == [0.3, 0.4, 0.5]
    assert hybrid.plateau([0.9, 0.95, 0.99, 1.0, 0.2]) == [0.9, 0.95, 0.99, 1.0]
    assert hybrid.plateau([]) == []


def test_weight_one_ranks_exactly_as_the_bm25_baseline():
    rng = np.random.default_rng(11)
    vocab = ["red", "blue", "shoe", "hat", "sock", "box"]
    texts = [" ".join(rng.choice(vocab, 2)) for _ in range(50)]  # 2 words of 6: many exact ties
    tie = rng.permutation(50)  # a popularity order: the baseline breaks ties by it
    queries = [" ".join(rng.choice(vocab + ["none"], 2)) for _ in range(40)]
    # Half the targets share the query's first word (near the top), half are any item (mostly far down).
    targets = np.array([rng.choice([j for j, t in enumerate(texts) if q.split()[0] in t.split()] or [0])
                        if i % 2 else rng.integers(50) for i, q in enumerate(queries)])
    want = lexical.BM25(texts).ranks(queries, targets, tie)
    scorer = LexicalScorer(lexical.BM25(texts), tie_order=tie)
    index = HybridIndex(BruteForceIndex(ITEMS_BIG, IDS_BIG, 10), scorer, ITEMS_BIG, IDS_BIG, 1.0)
    dense = evaluate.target_ranks(RNG.normal(size=[40, 8]).astype(np.float32), ITEMS_BIG, targets, None)
    got = hybrid.fused_ranks(index, RNG.normal(size=[40, 8]).astype(np.float32), queries, targets, None, dense,
                             weights=[1.0], )
    within = want <= 10
    assert within.sum() > 10 and (~within).sum() > 5  # both kinds of target
    for fusion in ("minmax_weighted_sum", "reciprocal_rank"):
        np.testing.assert_array_equal(got[fusion, 1.0][within], want[within])
        assert (got[fusion, 1.0][~within] > 10).all()


def op_names(folder) -> set[str]:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    names = set()
    for graph in proto.meta_graphs:
        names |= {n.op for n in graph.graph_def.node}
        for fn in graph.graph_def.library.function:
            names |= {n.op for n in fn.node_def}
    return names


@pytest.mark.parametrize("kind", ["brute_force", "ivf"])
def test_saved_and_reloaded_with_core_ops_only(tmp_path, kind):
    rng = np.random.default_rng(0)
    items = rng.normal(size=[64, 4]).astype(np.float32)
    ids = [f"x{j}" for j in range(64)]
    texts = [f"w{j % 9} w{j % 5}" for j in range(64)]
    inner = BruteForceIndex(items, ids, 5) if kind == "brute_force" else IVFIndex(items, ids, 5, num_partitions=4,
                                                                                   nprobe=4)
    module = tf.Module()
    module.index = HybridIndex(inner, LexicalScorer(lexical.BM25(texts)), items, ids, 0.5)
    module.search = tf.function(module.index.search_hybrid, input_signature=[
        tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    q, text, ex = tf.constant(items[:3]), tf.constant(["w1", "w2 w3", ""]), tf.constant([["x1"], [""], [""]])
    want = module.search(q, text, ex)
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))  # kept: its variables live as long as it does
    got = loaded.search(q, text, ex)
    assert got[1].numpy().tolist() == want[1].numpy().tolist()
    assert b"x1" not in got[1].numpy()[0]
    names = op_names(tmp_path / "m")
    assert {"Scann", "PyFunc", "EagerPyFunc"}.isdisjoint(names)
    assert all(hasattr(tf.raw_ops, n) for n in names), sorted(n for n in names if not hasattr(tf.raw_ops, n))
    assert {"UnsortedSegmentSum", "LookupTableFindV2"} <= names  # BM25 from the stored postings
    assert names & {"RegexReplace", "StaticRegexReplace"}  # the query tokenised in the graph


@pytest.mark.parametrize("fusion", ["minmax_weighted_sum", "reciprocal_rank"])
def test_split_ranks_match_the_served_top_k_with_exclusions(fusion):
    # Random catalog, 3 words of 5 per text (many equal BM25 scores), a random tie order, and per query 0-6
    # excluded items (sometimes the target, which stays ranked): wherever the target is in the served top k
    # its rank is its place there, else the rank is beyond k.
    rng = np.random.default_rng(3)
    vocab = ["red", "blue", "shoe", "hat", "sock"]
    items = rng.normal(size=[60, 4]).astype(np.float32)
    ids = [f"x{j}" for j in range(60)]
    texts = [" ".join(rng.choice(vocab, 3)) for _ in range(60)]
    scorer = LexicalScorer(lexical.BM25(texts), tie_order=rng.permutation(60))
    n, k = 48, 6
    targets = rng.integers(0, 60, n)
    queries = (items[targets] + rng.normal(size=[n, 4])).astype(np.float32)
    texts_q = [" ".join(rng.choice(vocab + ["none"], rng.integers(0, 3))) for _ in range(n)]
    exclude = [rng.choice(60, rng.integers(0, 7), replace=False) for _ in range(n)]
    for e, t in zip(exclude[::5], targets[::5]):
        e[:1] = t  # the target listed: kept
    padded = np.full([n, 8], "", object)  # wider than any query's: served padding changes nothing
    for i, e in enumerate(exclude):
        padded[i, :len(e)] = [ids[j] for j in e if j != targets[i]] + [""] * int((e == targets[i]).sum())
    dense = evaluate.target_ranks(queries, items, targets, exclude)
    weights = [0.0, 0.2, 0.5, 0.9, 0.99, 1.0]
    got = hybrid.fused_ranks(HybridIndex(BruteForceIndex(items, ids, k), scorer, items, ids, 0.0), queries,
                             texts_q, targets, exclude, dense, weights, [fusion])
    for w in weights:
        served = HybridIndex(BruteForceIndex(items, ids, k), scorer, items, ids, w, fusion).search_hybrid(
            tf.constant(queries), tf.constant(texts_q), tf.constant(padded.astype(str)))[1].numpy().astype(str)
        for i in range(n):
            listed = list(served[i])
            if ids[targets[i]] in listed:
                assert got[fusion, w][i] == listed.index(ids[targets[i]]) + 1, (w, i)
            else:
                assert got[fusion, w][i] > k, (w, i)
    assert (got[fusion, 0.5] <= k).sum() > n // 3 and (got[fusion, 0.5] > k).sum() > 3  # both kinds of target


def test_the_config_names_the_fusions_the_index_serves():
    hint = typing.get_type_hints(config.RetrievalConfig)["hybrid_fusion"]  # Optional[Literal[...]]
    assert typing.get_args(typing.get_args(hint)[0]) == FUSIONS
