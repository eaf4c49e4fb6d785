"""Shared helpers: chunked exact top-k and exclusion filtering."""

import tfrec  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from tfrec.index import base


@pytest.mark.parametrize("width,k", [(1, 1), (63, 5), (64, 64), (1000, 10), (1000, 1000), (20001, 110)])
def test_chunked_top_k_equals_top_k(width, k):
    scores = tf.constant(np.random.default_rng(width).standard_normal((5, width)).astype(np.float32))
    want_values, want_indices = tf.math.top_k(scores, k=k)
    # Unknown width inside a tf.function, like IVF's candidate matrix.
    fn = tf.function(base.chunked_top_k, input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([], tf.int32)])
    values, indices = fn(scores, tf.constant(k))
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())
    np.testing.assert_array_equal(indices.numpy(), want_indices.numpy())


def test_chunked_top_k_with_masked_columns():
    scores = np.full((2, 300), -np.inf, dtype=np.float32)
    scores[0, [5, 170, 299]] = [1.0, 3.0, 2.0]
    scores[1, 0] = 7.0
    values, indices = base.chunked_top_k(tf.constant(scores), 4)
    np.testing.assert_array_equal(values.numpy()[0, :3], [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(indices.numpy()[0, :3], [170, 299, 5])
    assert values.numpy()[1, 0] == 7.0 and np.all(np.isneginf(values.numpy()[1, 1:]))
    assert np.all((indices.numpy() >= 0) & (indices.numpy() < 300))


def test_filter_excluded_drops_and_pads():
    ids = tf.constant(["a", "b", "c", "d"])
    scores = tf.constant([[4.0, 3.0, 2.0, 1.0]])
    rows = tf.constant([[0, 1, 2, 3]])
    top, top_ids, valid = base.filter_excluded(scores, rows, ids, tf.constant([["b", "", "zz"]]), 3)
    assert top_ids.numpy().tolist() == [[b"a", b"c", b"d"]] and valid.numpy().tolist() == [3]
    top, top_ids, valid = base.filter_excluded(scores, rows, ids, tf.constant([["a", "b", "c"]]), 3)
    assert top_ids.numpy().tolist() == [[b"d", b"", b""]] and valid.numpy().tolist() == [1]


def test_is_member_equals_the_pairwise_comparison():
    """Same answer as the [batch, c, e] grid it replaces: duplicates, "" padding, empty rows, no exclusions."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"item_{i}".encode() for i in range(40)] + [b""], dtype=object)
    values = tf.constant(rng.choice(vocab[:-1], size=(6, 9)))
    members = tf.constant(rng.choice(vocab, size=(6, 25)))  # ~half of the vocabulary per row, repeats
    want = tf.reduce_any(tf.equal(values[:, :, None], members[:, None, :]), axis=2)
    got = base.is_member(values, members)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert 0 < got.numpy().sum() < got.numpy().size  # both outcomes are exercised
    none = base.is_member(values, tf.zeros([6, 0], tf.string))
    assert none.shape == (6, 9) and not none.numpy().any()
    fn = tf.function(base.is_member, input_signature=[tf.TensorSpec([None, None], tf.string)] * 2)
    np.testing.assert_array_equal(fn(values, members).numpy(), want.numpy())


def test_filter_excluded_with_many_exclusions_builds_no_grid():
    """e = 50k exclusions for 8 rows: a [8, k + e, e] grid would need 2e10 string comparisons (and 20 GB)."""
    rows, e, k = 8, 50_000, 5
    ids = tf.constant([f"i{n}" for n in range(e + k)])
    scores = tf.tile(tf.range(e + k, 0, -1, dtype=tf.float32)[None, :], [rows, 1])
    indices = tf.tile(tf.range(e + k)[None, :], [rows, 1])
    exclude = tf.tile(ids[None, :e], [rows, 1])  # the e best items are excluded in every row
    _, top_ids, valid = base.filter_excluded(scores, indices, ids, exclude, k)
    assert top_ids.numpy()[0].tolist() == [f"i{e + n}".encode() for n in range(k)]
    assert valid.numpy().tolist() == [k] * rows


class _Catalog(tf.Module):
    pass


def test_init_catalog_sets_the_shared_attributes():
    index = _Catalog()
    embeddings, ids = base.init_catalog(index, [[1, 0], [0, 1], [1, 1]], ["a", "b", "c"], k=10)
    assert (index.k, index.num_items, index.dim, index.k_out) == (10, 3, 2, 3)  # k' = min(10, 3)
    assert embeddings.dtype == np.float32 and ids.tolist() == [b"a", b"b", b"c"]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        base.init_catalog(_Catalog(), [[1.0]], ["a"], k=0)
    with pytest.raises(ValueError, match="appears more than once"):
        base.init_catalog(_Catalog(), [[1.0], [2.0]], ["a", "a"], k=1)
