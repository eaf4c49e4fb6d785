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
