"""BM25 in the graph: the same words and scores as tfrec.lexical, saved and reloaded, core ops only."""

import math

import numpy as np
import tensorflow as tf

from tfrec import lexical
from tfrec.lexical_graph import LexicalScorer, graph_words
from tests.helpers.bm25_reference import dense_scores

DOCS = ["Red shoe", "red red hat", "blue shoe, shoe box"]  # lengths 2, 3, 4: avgdl 3

TRICKY = ["Hello, World!", "İstanbul ΣΟΦΟΣ", "naïve café_au-lait 42nd", "ß straße STRASSE",
          "e\u0301cole résumé", "日本語のテキスト 東京", "x²+y³ ½ Ⅻ ٣٤", "tab\tnew\nline", "", "   ",
          "__init__ foo-bar_baz", "Ǆ ǅ ǆ", "emoji 😀 ok", "MiXeD123abc", "ﬁ ligature"]


def by_hand(tf_, length, df):
    """One term's BM25 weight in a 3-document collection with avgdl 3 (k1 1.2, b 0.75)."""
    idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
    return idf * tf_ * 2.2 / (tf_ + 1.2 * (0.25 + 0.75 * length / 3))


def test_graph_words_match_python_words_on_tricky_strings():
    got = [[w.decode() for w in row] for row in graph_words(tf.constant(TRICKY)).to_list()]
    assert got == [lexical.words(t) for t in TRICKY]
    # Worked out by hand for a few: accents kept, combining marks split, "-" splits, "_" joins.
    assert got[2] == ["naïve", "café_au", "lait", "42nd"]
    assert got[4] == ["e", "cole", "résumé"]
    assert got[8] == [] and got[12] == ["emoji", "ok"]


def test_scores_by_hand():
    scorer = LexicalScorer(lexical.BM25(DOCS))
    got = scorer.scores(tf.constant(["RED shoe!", "hat hat", "nothing here", ""])).numpy()
    red = [by_hand(1, 2, 2), by_hand(2, 3, 2), 0.0]
    shoe = [by_hand(1, 2, 2), 0.0, by_hand(2, 4, 2)]
    np.testing.assert_allclose(got[0], np.add(red, shoe), rtol=1e-6)
    np.testing.assert_allclose(got[1], [0.0, 2 * by_hand(1, 3, 1), 0.0], rtol=1e-6)  # typed twice counts twice
    np.testing.assert_array_equal(got[2:], np.zeros([2, 3]))


def random_texts(rng, n, vocab, longest):
    return [" ".join(rng.choice(vocab, rng.integers(0, longest))) for _ in range(n)]


def test_scores_equal_lexical_on_random_data_after_save_and_reload(tmp_path):
    rng = np.random.default_rng(3)
    vocab = [f"W{i}" for i in range(30)] + ["Ünï", "x_1", "42"]
    texts = random_texts(rng, 60, vocab, 8)
    queries = random_texts(rng, 20, vocab + ["unknown", "w0,w1"], 5)
    index = lexical.BM25(texts)
    want = dense_scores(index, queries)
    module = tf.Module()
    module.scorer = LexicalScorer(index)
    module.score = tf.function(module.scorer.scores, input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_allclose(module.score(tf.constant(queries)).numpy(), want, rtol=1e-5, atol=1e-6)
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.score(tf.constant(queries)).numpy(), want, rtol=1e-5, atol=1e-6)
    assert want[:, :].max() > 0 and (want == 0).any()  # both reached and unreached items


def test_empty_catalog_vocabulary_scores_zero():
    scorer = LexicalScorer(lexical.BM25(["", "!!"]))
    np.testing.assert_array_equal(scorer.scores(tf.constant(["a b"])).numpy(), [[0.0, 0.0]])
