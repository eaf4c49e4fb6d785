"""build_index: kinds, small-catalog fallback; recall_against_exact."""

import tfrec  # noqa: F401

import pytest

from tfrec import index as index_lib


@pytest.mark.parametrize("kind", ["ivf", "scann"])
@pytest.mark.parametrize("num_items", [10, 999])
def test_small_catalog_falls_back_to_brute_force(kind, num_items, helpers):
    items, ids, _ = helpers.clustered(num_items, dim=8)
    index, note = index_lib.build_index(kind, items, ids, 5, nprobe=3)  # params ignored on fallback
    assert isinstance(index, index_lib.BruteForceIndex)
    assert isinstance(note, str) and kind in note and "brute_force" in note and "\n" not in note
    assert index.search(items[:2])[1].shape == (2, 5)


def test_kinds_at_threshold(helpers):
    items, ids, _ = helpers.clustered(index_lib.APPROXIMATE_MIN_ITEMS, dim=8)
    for kind, cls in [("brute_force", index_lib.BruteForceIndex), ("ivf", index_lib.IVFIndex)]:
        index, note = index_lib.build_index(kind, items, ids, 5)
        assert isinstance(index, cls) and note is None
    index, note = index_lib.build_index("ivf", items, ids, 5, num_partitions=7, nprobe=2)
    assert (index.num_partitions, index.nprobe) == (7, 2)
    with pytest.raises(ValueError, match="unknown index kind"):
        index_lib.build_index("hnsw", items, ids, 5)


def test_recall_against_exact(clustered_data, helpers):
    items, ids, queries = clustered_data
    exact = index_lib.BruteForceIndex(items, ids, k=10)
    assert index_lib.recall_against_exact(exact, exact, queries, k=10) == 1.0
    # Random (unclustered) data and one probed partition of 100: clearly below 1.
    items, ids, queries = helpers.clustered(2000, dim=16, num_centers=2000, seed=7)
    weak = index_lib.IVFIndex(items, ids, k=10, num_partitions=100, nprobe=1)
    exact = index_lib.BruteForceIndex(items, ids, k=10)
    recall = index_lib.recall_against_exact(weak, exact, queries, k=10, batch_size=7)
    assert 0.0 < recall < 0.8, recall
