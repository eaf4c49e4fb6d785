"""ScannIndex: recall on clustered data, exclusion, clamping, minimum size."""

import tfrec  # noqa: F401

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrec.index import BruteForceIndex, ScannIndex, recall_against_exact


@pytest.fixture(scope="module")
def scann_index(clustered_data):
    items, ids, _ = clustered_data
    return ScannIndex(items, ids, k=10)


def test_recall_high_on_clustered_data(clustered_data, scann_index):
    items, ids, queries = clustered_data
    recall = recall_against_exact(scann_index, BruteForceIndex(items, ids, k=10), queries, k=10)
    assert recall >= 0.9, recall


def test_scores_are_exact_dot_products(clustered_data, scann_index):
    items, ids, queries = clustered_data
    scores, got = scann_index.search(queries[:5])
    rows = np.array([[int(i[4:]) for i in row] for row in got.numpy().astype(str)])
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries[:5] @ items.T, rows, 1), atol=1e-4)


def test_exclusion_still_returns_k(clustered_data, scann_index, helpers):
    items, ids, queries = clustered_data
    exact = helpers.exact_top_k(items, queries[:6], 10)
    exclude = tf.constant([[ids[r] for r in row] + [""] * 2 for row in exact])  # [6, 12]
    scores, got = scann_index.search(queries[:6], exclude)
    assert got.shape == (6, 10)
    for i in range(6):
        row = set(got.numpy()[i].astype(str))
        assert "" not in row and not row & set(ids[exact[i]])
    assert np.all(np.isfinite(scores.numpy()))


def test_k_larger_than_catalog_clamps(helpers):
    items, ids, queries = helpers.clustered(40, dim=8, num_centers=3, num_queries=3)
    index = ScannIndex(items, ids, k=100)
    scores, got = index.search(queries)
    assert got.shape == (3, 40)
    assert all(set(row.astype(str)) == set(ids) for row in got.numpy())
    assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-6)


def test_refuses_tiny_catalog(helpers):
    items, ids, _ = helpers.clustered(15, dim=8)
    with pytest.raises(ValueError, match="at least 16"):
        ScannIndex(items, ids, k=5)


def test_params_json(scann_index):
    params = json.loads(json.dumps(scann_index.params()))
    assert params["kind"] == "scann" and params["anisotropic_quantization_threshold"] == 0.2
    assert params["num_leaves"] == 63 and params["reorder_k"] >= 10


@pytest.mark.parametrize("target", [0.8, 0.99])
def test_search_parameters_calibrated_from_measured_recall(clustered_data, target):
    # Calibrating on the very queries we measure: the chosen setting reaches the target on them.
    items, ids, queries = clustered_data
    index = ScannIndex(items, ids, k=10, target_recall=target, calibration_queries=queries)
    recall = recall_against_exact(index, BruteForceIndex(items, ids, k=10), queries, k=10)
    params = index.params()
    assert params["target_recall"] == target and params["calibrated_recall"] >= target
    assert recall >= target - 1e-6, (recall, params)


def test_given_parameters_are_not_calibrated(clustered_data):
    items, ids, _ = clustered_data
    params = ScannIndex(items, ids, k=10, num_leaves_to_search=3, reorder_k=40).params()
    assert (params["num_leaves_to_search"], params["reorder_k"], params["calibrated_recall"]) == (3, 40, None)
