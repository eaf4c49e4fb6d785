"""Negatives modes of RetrievalTask on a 3-item catalog, losses worked out by hand.

Catalog embeddings (2-d): item 0 = [1, 0], item 1 = [0, 1], item 2 = [-1, 0];
temperature 1 everywhere, so a logit is just a dot product.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec.tasks import RetrievalTask

CATALOG = tf.constant([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
POPULARITY = np.array([0.5, 0.25, 0.25], np.float32)


def task(negatives, logq=True, num_sampled=0, sampling="uniform"):
    t = RetrievalTask(1.0, logq_correction=logq, negatives=negatives, num_sampled=num_sampled, sampling=sampling,
                      batch_metric_ks=(1,))
    t.set_catalog_probability(POPULARITY)
    return t


def rows(ids):
    return tf.gather(CATALOG, ids), tf.constant(ids, tf.int64)


def test_full_softmax_by_hand():
    # Query [1, 0], positive item 0: logits [1, 0, -1];
    # loss = log(1 + e^-1 + e^-2) = log(1.503214) = 0.407606. No correction in full mode.
    positives, ids = rows([0])
    loss = task("full")(tf.constant([[1.0, 0.0]]), positives, ids, extra_embeddings=CATALOG)
    assert float(loss) == pytest.approx(0.407606, abs=1e-5)


def test_sampled_uniform_logq_is_a_constant_shift():
    # S = 2 uniform draws (items 1, 2): every column loses log(2 * 1/3), so the loss is the
    # uncorrected one: logits [1, 0, -1] -> 0.407606 (as in the full case).
    positives, ids = rows([0])
    sampled, sampled_ids = rows([1, 2])
    loss = task("sampled", num_sampled=2)(tf.constant([[1.0, 0.0]]), positives, ids,
                                          extra_embeddings=sampled, extra_ids=sampled_ids)
    assert float(loss) == pytest.approx(0.407606, abs=1e-5)


def test_sampled_popularity_logq_by_hand():
    # q = p = [.5, .25, .25], S = 2: corrections log(2q) = [0, -ln 2, -ln 2] for columns
    # [positive 0, drawn 1, drawn 2]; logits [1, ln 2, ln 2 - 1];
    # loss = log(1 + 2e^-1 + 2e^-2) = log(2.006430) = 0.696357.
    positives, ids = rows([0])
    sampled, sampled_ids = rows([1, 2])
    loss = task("sampled", num_sampled=2, sampling="popularity")(
        tf.constant([[1.0, 0.0]]), positives, ids, extra_embeddings=sampled, extra_ids=sampled_ids)
    assert float(loss) == pytest.approx(0.696357, abs=1e-5)


def test_sampled_accidental_hit_masked():
    # Draws [0, 1]: the draw of item 0 is the query's own positive, so it is masked;
    # left: logits [1 (positive), 0 (item 1)] -> log(1 + e^-1) = 0.313262.
    positives, ids = rows([0])
    sampled, sampled_ids = rows([0, 1])
    loss = task("sampled", logq=False, num_sampled=2)(tf.constant([[1.0, 0.0]]), positives, ids,
                                                      extra_embeddings=sampled, extra_ids=sampled_ids)
    assert float(loss) == pytest.approx(0.313262, abs=1e-5)


def test_mixed_logq_by_hand():
    # Queries [1, 0] and [0, 1] with positives 0 and 1; one uniform draw (item 2); B = 2, S = 1.
    # Expected counts B p + S q = [2*.5 + 1/3, 2*.25 + 1/3, 2*.25 + 1/3] = [4/3, 5/6, 5/6].
    # Row 0: logits [1 - ln 4/3, -ln 5/6, -1 - ln 5/6]; relative to the positive
    #   [0, ln 1.6 - 1, ln 1.6 - 2] -> log(1 + e^-0.529996 + e^-1.529996) = 0.590636.
    # Row 1: logits [-ln 4/3, 1 - ln 5/6, -ln 5/6]; relative [-1 - ln 1.6, 0, -1] -> 0.468630.
    # Mean 0.529633.
    positives, ids = rows([0, 1])
    sampled, sampled_ids = rows([2])
    loss = task("mixed", num_sampled=1)(tf.constant([[1.0, 0.0], [0.0, 1.0]]), positives, ids,
                                        extra_embeddings=sampled, extra_ids=sampled_ids)
    assert float(loss) == pytest.approx(0.529633, abs=1e-5)


def test_mixed_accidental_hits_masked_in_batch_and_in_draws():
    # Positives [0, 0] (the same item twice) and one draw of item 0; no logQ.
    # Every column holds item 0 = [1, 0], so for each row only its own diagonal column is left:
    # loss = -log(1) = 0. Without masking it would be log(3) = 1.098612.
    positives, ids = rows([0, 0])
    sampled, sampled_ids = rows([0])
    queries = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    masked = task("mixed", logq=False, num_sampled=1)(queries, positives, ids, extra_embeddings=sampled,
                                                        extra_ids=sampled_ids)
    assert float(masked) == pytest.approx(0.0, abs=1e-5)
    unmasked = RetrievalTask(1.0, logq_correction=False, remove_accidental_hits=False, negatives="mixed",
                             num_sampled=1)
    unmasked.set_catalog_probability(POPULARITY)
    loss = unmasked(queries, positives, ids, extra_embeddings=sampled, extra_ids=sampled_ids)
    assert float(loss) == pytest.approx(math.log(3.0), abs=1e-5)


def test_sample_draws_by_popularity_or_uniformly():
    tf.random.set_seed(0)
    draws = task("sampled", num_sampled=4000, sampling="popularity").sample().numpy()
    assert draws.shape == (4000,) and set(draws) <= {0, 1, 2}
    assert np.mean(draws == 0) == pytest.approx(0.5, abs=0.05)
    uniform = task("mixed", num_sampled=4000).sample().numpy()
    assert np.mean(uniform == 0) == pytest.approx(1 / 3, abs=0.05)
    assert task("full").sample().shape == (0,)


@pytest.mark.parametrize("kwargs, key", [({"negatives": "hard"}, "retrieval.negatives"),
                                         ({"negatives": "sampled", "num_sampled": 0}, "retrieval.num_sampled"),
                                         ({"sampling": "zipf"}, "retrieval.sampling")])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RetrievalTask(**kwargs)


def test_negatives_settings_round_trip():
    t = RetrievalTask(0.1, negatives="mixed", num_sampled=7, sampling="popularity")
    clone = RetrievalTask.from_config(t.get_config())
    assert (clone.negatives, clone.num_sampled, clone.sampling) == ("mixed", 7, "popularity")


def test_items_that_are_not_candidates_are_never_negatives():
    # Item 2 is no candidate (no training interaction). Full softmax for query [1, 0], positive 0:
    # logits [1, 0, masked] -> log(1 + e^-1) = 0.313262 (with item 2 it would be 0.407606).
    t = task("full")
    t.set_catalog_probability(POPULARITY, np.array([True, True, False]))
    positives, ids = rows([0])
    assert float(t(tf.constant([[1.0, 0.0]]), positives, ids, extra_embeddings=CATALOG)) == pytest.approx(
        0.313262, abs=1e-5)
    # A positive outside the candidates (a validation row) keeps its own column.
    positives, ids = rows([2])
    loss = t(tf.constant([[-1.0, 0.0]]), positives, ids, extra_embeddings=CATALOG)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), abs=1e-5)
    # Draws never pick it, uniform or by popularity.
    for sampling in ("uniform", "popularity"):
        s = task("sampled", num_sampled=500, sampling=sampling)
        s.set_catalog_probability(POPULARITY, np.array([True, True, False]))
        assert 2 not in set(s.sample().numpy())
