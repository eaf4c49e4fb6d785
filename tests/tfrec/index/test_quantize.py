"""int8 item codes: hand-worked scores, brute force over them, the int8 IVF, the recall gate."""

import tfrec  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from tfrec import index as index_lib
from tfrec.export import savedmodel as export
from tfrec.index import brute_force_int8, ivf_build, quantize


def test_codes_and_scores_on_hand_worked_vectors():
    # Row 0: max |x| = 0.3, scale 0.3/127; x / scale = [127, -42.33, 84.67, 0] -> codes [127, -42, 85, 0].
    # Against q = [1, 1, 1, 1]: float32 score 0.4; int8 score (127 - 42 + 85) * 0.3/127 = 51/127 = 0.401575.
    # Row 1: [0, 0, 0, 0] scores 0 and is still a real item (a padding slot would score -inf).
    # Row 2: [-1, 0.5, 0, 0.25]: scale 1/127, codes [-127, 64 (63.5 rounds to even), 0, 32 (31.75)];
    #        int8 score (-127 + 64 + 0 + 32) / 127 = -31/127; float32 score -0.25.
    items = np.array([[0.3, -0.1, 0.2, 0.0], [0, 0, 0, 0], [-1, 0.5, 0, 0.25]], np.float32)
    codes, scales = quantize.quantize_rows(items)
    np.testing.assert_array_equal(codes, [[127, -42, 85, 0], [0, 0, 0, 0], [-127, 64, 0, 32]])
    np.testing.assert_allclose(scales[[0, 2]], [0.3 / 127, 1 / 127], rtol=1e-6)
    assert 0 < scales[1] < 1e-30

    # Brute force keeps one scale per chunk: here one chunk, scale max |x| over all rows = 1/127, so
    # row 0 has codes rint([38.1, -12.7, 25.4, 0]) = [38, -13, 25, 0] and scores 50/127; row 2 as above.
    index = index_lib.BruteForceInt8Index(items, ["a", "zero", "b"], k=3)
    np.testing.assert_allclose(index.scales.numpy(), [1 / 127], rtol=1e-6)
    scores, ids = index.search(tf.ones([1, 4]))
    assert ids.numpy().tolist() == [[b"a", b"zero", b"b"]]
    np.testing.assert_allclose(scores.numpy(), [[50 / 127, 0.0, -31 / 127]], rtol=1e-6)
    exact = index_lib.BruteForceIndex(items, ["a", "zero", "b"], k=3).search(tf.ones([1, 4]))[0]
    np.testing.assert_allclose(exact.numpy(), [[0.4, 0.0, -0.25]], rtol=1e-6)


def _residual_reconstruction_top_k(items: np.ndarray, centroids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows by dot product with each row's nearest centroid plus its residual rounded to 255 levels of
    the residual's own max |x| (written independently)."""
    nearest = np.argmin(((items[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    residuals = items - centroids[nearest]
    step = np.maximum(np.abs(residuals).max(axis=1, keepdims=True) / 127, np.finfo(np.float32).tiny)
    rebuilt = centroids[nearest] + np.round(residuals / step) * step
    return np.argsort(-(queries @ rebuilt.T), axis=1, kind="stable")[:, :k]


def _chunk_reconstruction_top_k(items: np.ndarray, queries: np.ndarray, k: int, width: int) -> np.ndarray:
    """Top-k rows with the rows sorted by max |x|, cut into groups of ``width``, each rounded to 255 levels of
    its group's largest |x| (written independently)."""
    order = np.argsort(np.abs(items).max(axis=1), kind="stable")
    rebuilt = np.empty_like(items)
    for start in range(0, len(items), width):
        group = order[start : start + width]
        step = np.abs(items[group]).max() / 127
        rebuilt[group] = np.round(items[group] / step) * step
    return np.argsort(-(queries @ rebuilt.T), axis=1, kind="stable")[:, :k]


def test_brute_force_int8_over_several_chunks_with_exclusion(monkeypatch, helpers):
    # 64-item chunks: 1000 items in 16 chunks, the last one padded; padding never comes back.
    monkeypatch.setattr(brute_force_int8, "CHUNK_ITEMS", 64)
    items, ids, queries = helpers.clustered(1000, dim=16, num_centers=1000, num_queries=12, seed=2)
    index = index_lib.BruteForceInt8Index(items, ids, k=10)
    assert index.codes.shape == (16, 16, 64) and index.codes.dtype == tf.int8
    want = _chunk_reconstruction_top_k(items, queries, 10, 64)
    got = tf.function(index.search)(tf.constant(queries), tf.zeros([12, 0], tf.string))[1].numpy().astype(str)
    np.testing.assert_array_equal(got, ids[want])
    exclude = tf.constant([[ids[r] for r in row[:3]] + [""] for row in want])  # [12, 4]
    got = index.search(queries, exclude)[1].numpy().astype(str)
    np.testing.assert_array_equal(got[:, :7], ids[want[:, 3:]])
    assert "" not in got


def test_brute_force_int8_padding_never_beats_negative_scores(monkeypatch):
    # 70 items in two 64-item chunks: the last chunk holds 58 padding slots, which score 0 before masking.
    # Item i = [-(i + 1) / 70, 0]; items 0-63 (the smallest |x|) share the first chunk, scale 64 / (70 * 127),
    # so item i's code is rint(-(i + 1) * 127 / 64): -2, -4, -6, -8 for items 0-3, and against q = [1, 0] its
    # int8 score is code * 64 / 8890 (all negative): the best three are items 0, 1, 2, and then,
    # excluding item 1, items 0, 2, 3.
    monkeypatch.setattr(brute_force_int8, "CHUNK_ITEMS", 64)
    items = np.stack([-(np.arange(70) + 1) / 70, np.zeros(70)], axis=1).astype(np.float32)
    ids = [f"i{i}" for i in range(70)]
    index = index_lib.BruteForceInt8Index(items, ids, k=3)
    assert index.codes.shape == (2, 2, 64)
    scores, got = tf.function(index.search)(tf.constant([[1.0, 0.0]]), tf.constant([[""]]))
    assert got.numpy().tolist() == [[b"i0", b"i1", b"i2"]]
    np.testing.assert_allclose(scores.numpy(), [[-128 / 8890, -256 / 8890, -384 / 8890]], rtol=1e-6)
    got = index.search(tf.constant([[1.0, 0.0]]), tf.constant([["i1"]]))[1]
    assert got.numpy().tolist() == [[b"i0", b"i2", b"i3"]]


def test_ivf_int8_probing_everything_ranks_as_the_reconstruction(helpers):
    items, ids, queries = helpers.clustered(1500, dim=16, num_queries=20, seed=3)
    index = index_lib.IVFIndex(items, ids, k=10, num_partitions=20, nprobe=20, quantization="int8")
    assert index.kind == "ivf_int8" and not hasattr(index, "item_embeddings")
    got = index.search(queries)[1].numpy().astype(str)
    want = _residual_reconstruction_top_k(items, index.centroids.numpy(), queries, 10)
    np.testing.assert_array_equal(got, ids[want])


def test_ivf_rescores_exactly(helpers):
    items, ids, queries = helpers.clustered(1500, dim=16, num_queries=20, seed=3)
    index = index_lib.IVFIndex(items, ids, k=10, num_partitions=20, nprobe=20)
    scores, got = index.search(queries)
    want = helpers.exact_top_k(items, queries, 10)
    np.testing.assert_array_equal(got.numpy().astype(str), ids[want])
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries @ items.T, want, 1), atol=1e-5)


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_ivf_short_rows_fall_back_to_a_full_scan(quantization, helpers):
    # ~3 items per partition and nprobe=1 cannot fill k=10: those queries scan every item.
    items, ids, queries = helpers.clustered(300, dim=8, num_queries=5, seed=4)
    index = index_lib.IVFIndex(items, ids, k=10, num_partitions=100, nprobe=1, quantization=quantization)
    want = helpers.exact_top_k(items, queries, 10) if quantization == "none" else _residual_reconstruction_top_k(
        items, index.centroids.numpy(), queries, 10)
    np.testing.assert_array_equal(index.search(queries)[1].numpy().astype(str), ids[want])


def test_recall_gate_refuses_a_quantised_index_below_min_recall(helpers):
    # 300 items within 1e-4 of one vector: int8 steps (~0.3/127 = 0.0024) cannot tell them apart,
    # so the int8 top-10 is far from the exact one; well-separated items pass the same gate.
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(32).astype(np.float32)
    items = centre + 1e-4 * rng.standard_normal((300, 32)).astype(np.float32)
    ids = [f"item{i}" for i in range(300)]
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    index = index_lib.BruteForceInt8Index(items, ids, k=10)
    with pytest.raises(export.ExportRefused, match=r"brute_force_int8 index reached recall@10=0\.\d+ .*"
                                                   r"export.min_recall=0.95.*quantization: none"):
        export.check_recall(index, items, ids, queries, 10, 0.95)
    items, ids, queries = helpers.clustered(300, dim=32, num_centers=300, num_queries=20, seed=5)
    index = index_lib.BruteForceInt8Index(items, ids, k=10)
    assert export.check_recall(index, items, ids, queries, 10, 0.95)["recall@10"] >= 0.95


def test_export_kinds_and_model_names():
    assert export.index_kinds("all", "int8") == ["brute_force_int8", "ivf_int8", "scann"]
    assert export.index_kinds("ivf", "none") == ["ivf"]
    assert export.index_kinds("scann", "int8") == ["scann"]
    names = [export.model_name_for("shop", k) for k in ("brute_force", "brute_force_int8", "ivf", "ivf_int8")]
    assert names == ["shop", "shop_int8", "shop_ivf", "shop_ivf_int8"]


def test_small_catalog_int8_ivf_falls_back_to_int8_brute_force(helpers):
    items, ids, _ = helpers.clustered(50, dim=8)
    index, note = index_lib.build_index("ivf_int8", items, ids, 5)
    assert isinstance(index, index_lib.BruteForceInt8Index) and "brute_force_int8" in note


def test_ivf_exact_when_every_score_is_negative(helpers):
    # Padding slots score 0 before masking; with every real score below 0 they must still never
    # push a real block out of the candidates (items in the positive orthant, queries in the negative one).
    items, ids, queries = helpers.clustered(1500, dim=16, num_queries=20, seed=6)
    items, queries = np.abs(items), -np.abs(queries)
    index = index_lib.IVFIndex(items, ids, k=10, num_partitions=30, nprobe=30)
    assert index.num_items % 64 and index.max_partition_size % 64  # partly padded blocks exist
    np.testing.assert_array_equal(index.search(queries)[1].numpy().astype(str),
                                  ids[helpers.exact_top_k(items, queries, 10)])


def test_ivf_blocks_hold_residual_codes_on_hand_worked_vectors():
    # Partition 0 (centroid [0.4, 0.2]) holds items 0 and 2, partition 1 (centroid [0, -1]) item 1; 2-item blocks.
    # Item 0 [0.5, 0.3]: residual [0.1, 0.1], scale 0.1/127, codes [127, 127].
    # Item 1 [0, -0.5]: residual [0, 0.5], scale 0.5/127, codes [0, 127].
    # Item 2 [0.2, 0.25]: residual [-0.2, 0.05], scale 0.2/127, codes [-127, 32 (31.75)].
    # Against q = [1, 2] (q . c0 = 0.8, q . c1 = -2): item 0 scores 0.8 + 381 * 0.1/127 = 1.1 (exact 1.1),
    # item 2 scores 0.8 - 63 * 0.2/127 = 0.700787 (exact 0.7), item 1 -2 + 254 * 0.5/127 = -1 (exact -1).
    items = np.array([[0.5, 0.3], [0.0, -0.5], [0.2, 0.25]], np.float32)
    centroids = np.array([[0.4, 0.2], [0.0, -1.0]], np.float32)
    codes, scales, rows, offsets = ivf_build.pack_blocks(items, np.array([0, 1, 0]), np.array([2, 1]), 2, centroids)
    np.testing.assert_array_equal(codes, [[[127, -127], [127, 32]], [[0, 0], [127, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_allclose(scales, [[0.1 / 127, 0.2 / 127], [0.5 / 127, 0], [0, 0]], rtol=1e-5)
    np.testing.assert_array_equal(rows, [[0, 2], [1, -1], [-1, -1]])
    np.testing.assert_array_equal(offsets, [0, 1, 2])
    bias = tf.constant([[0.8, -2.0]])  # [B=1, G=2]: each block's centroid score
    scores = quantize.block_scores(tf.constant([[1.0, 2.0]]), tf.constant(codes[:2]), tf.constant(scales[:2]),
                                   bias=bias)
    np.testing.assert_allclose(scores.numpy(), [[1.1, 0.8 - 63 * 0.2 / 127, -1.0, -np.inf]], rtol=1e-5)


def test_ivf_int8_calibrates_the_smallest_nprobe_reaching_the_target(clustered_data, helpers):
    # The growth steps can jump past the smallest passing nprobe; one less must measure below the target.
    items, ids, queries = clustered_data
    index = index_lib.IVFIndex(items, ids, k=10, num_partitions=100, target_recall=0.97,
                               calibration_queries=queries, quantization="int8")
    truth = ids[helpers.exact_top_k(items, queries, 10)]

    def recall(nprobe: int) -> float:
        fixed = index_lib.IVFIndex(items, ids, k=10, num_partitions=100, nprobe=nprobe, quantization="int8")
        found = fixed.search(queries)[1].numpy().astype(str)
        return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])

    assert recall(index.nprobe) >= 0.97 > recall(index.nprobe - 1), index.params()
