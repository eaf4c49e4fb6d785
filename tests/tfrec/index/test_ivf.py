"""IVFIndex: exact when probing everything, high recall on clustered data, exclusion."""

import tfrec  # noqa: F401

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrec.index import BruteForceIndex, IVFIndex, recall_against_exact


def test_probing_all_partitions_is_exact(helpers):
    items, ids, queries = helpers.clustered(1500, dim=16, num_queries=40, seed=3)
    index = IVFIndex(items, ids, k=10, num_partitions=20, nprobe=20)
    scores, got = index.search(queries)
    want = helpers.exact_top_k(items, queries, 10)
    for i in range(len(queries)):
        assert set(got.numpy()[i].astype(str)) == set(ids[want[i]])
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries @ items.T, want, 1), atol=1e-5)


def test_recall_high_on_clustered_data(clustered_data):
    items, ids, queries = clustered_data
    index = IVFIndex(items, ids, k=10)  # defaults: ~sqrt(N)=63 partitions, nprobe calibrated to 0.95
    assert index.num_partitions == 63 and 1 <= index.nprobe < 63
    assert index.calibrated_recall >= 0.95
    recall = recall_against_exact(index, BruteForceIndex(items, ids, k=10), queries, k=10)
    assert recall >= 0.9, recall


@pytest.mark.parametrize("target", [0.8, 1.0])
def test_calibration_on_the_served_queries_hits_target(clustered_data, target):
    # Calibrating on the very queries we measure makes the estimate exact.
    items, ids, queries = clustered_data
    index = IVFIndex(items, ids, k=10, num_partitions=100, target_recall=target, calibration_queries=queries)
    recall = recall_against_exact(index, BruteForceIndex(items, ids, k=10), queries, k=10)
    assert recall >= target - 1e-6 and abs(recall - index.calibrated_recall) < 0.01, (recall, index.params())
    if target < 1.0:
        assert index.nprobe < 100


def test_low_nprobe_is_approximate(clustered_data):
    # Guards against the test above passing because IVF silently searched everything.
    items, ids, queries = clustered_data
    index = IVFIndex(items, ids, k=10, num_partitions=200, nprobe=1)
    recall = recall_against_exact(index, BruteForceIndex(items, ids, k=10), queries, k=10)
    assert recall < 0.9, recall


def test_exclusion_still_returns_k(clustered_data, helpers):
    items, ids, queries = clustered_data
    index = IVFIndex(items, ids, k=10, nprobe=8)
    exact = helpers.exact_top_k(items, queries[:8], 10)
    exclude = tf.constant([[ids[r] for r in row] + [""] * 3 for row in exact])  # [8, 13]
    scores, got = index.search(queries[:8], exclude)
    assert got.shape == (8, 10)
    for i in range(8):
        row = set(got.numpy()[i].astype(str))
        assert "" not in row and not row & set(ids[exact[i]])
    assert np.all(np.isfinite(scores.numpy()))


def test_too_few_probed_candidates_falls_back_to_exact(helpers):
    # ~3 items per partition and nprobe=1 cannot fill k=10: the batch is answered exactly.
    items, ids, queries = helpers.clustered(300, dim=8, num_queries=5, seed=4)
    index = IVFIndex(items, ids, k=10, num_partitions=100, nprobe=1)
    got = index.search(queries)[1].numpy().astype(str)
    np.testing.assert_array_equal(got, ids[helpers.exact_top_k(items, queries, 10)])


def test_deterministic_and_params(helpers):
    items, ids, _ = helpers.clustered(1200, dim=8, seed=5)
    a, b = IVFIndex(items, ids, k=5, seed=1), IVFIndex(items, ids, k=5, seed=1)
    np.testing.assert_array_equal(a.centroids.numpy(), b.centroids.numpy())
    np.testing.assert_array_equal(a.block_offsets.numpy(), b.block_offsets.numpy())
    params = json.loads(json.dumps(a.params()))
    assert params["kind"] == "ivf" and params["num_partitions"] == 35 and a.nprobe == b.nprobe
    assert params["target_recall"] == 0.95 and params["calibrated_recall"] >= 0.95
    fixed = IVFIndex(items, ids, k=5, nprobe=3).params()
    assert fixed["nprobe"] == 3 and fixed["calibrated_recall"] is None


def test_chunked_pair_scoring_matches_single_chunk(clustered_data, monkeypatch):
    # Large batches score (query, block) pairs in cache-sized chunks; force
    # 3-pair chunks (uneven split) and compare with the one-chunk path.
    from tfrec.index import ivf

    items, ids, queries = clustered_data
    index = IVFIndex(items, ids, k=10, nprobe=5)
    exclude = tf.constant([[ids[i], ""] for i in range(len(queries))])
    want = index.search(queries, exclude)
    monkeypatch.setattr(ivf, "PAIR_CHUNK_BYTES", 4 * index.dim * ivf.BLOCK_SIZE * 3)
    got = tf.function(index.search)(tf.constant(queries), exclude)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-6)
