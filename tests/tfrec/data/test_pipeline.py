"""make_dataset: shuffled batches gathered by row number, as a shuffle of the rows would give them."""

import numpy as np
import tensorflow as tf

from tfrec.data import pipeline


def _features(n):
    return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
            "name": np.array([f"row{i}" for i in range(n)], dtype=object)}


def test_shuffled_batches_are_those_of_a_row_shuffle_across_passes():
    n, batch, seed = 300, 16, 5
    feats = _features(n)
    got = pipeline.make_dataset(feats, batch, shuffle=True, seed=seed, drop_remainder=True, repeat=True)
    rows = tf.data.Dataset.from_tensor_slices({"x": feats["x"], "name": feats["name"].astype(str).tolist()})
    want = rows.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().batch(batch, drop_remainder=True)
    seen = []
    for a, b in zip(got.take(60), want.take(60)):  # 60 x 16 rows: three passes over the 300
        np.testing.assert_array_equal(a["x"].numpy(), b["x"].numpy())
        np.testing.assert_array_equal(a["name"].numpy(), b["name"].numpy())
        seen.extend(a["x"].numpy()[:, 0] // 2)
    first_pass = np.array(seen[:n - n % batch], dtype=int)
    assert len(set(first_pass)) == len(first_pass)  # a permutation within a pass, no row twice
    assert not np.array_equal(first_pass, np.arange(len(first_pass)))  # and shuffled


def test_rows_stay_together_and_the_last_batch_is_kept_unless_dropped():
    feats = _features(10)
    batches = list(pipeline.make_dataset(feats, 4, shuffle=True, seed=1))
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    for b in batches:
        for x, name in zip(b["x"].numpy(), b["name"].numpy()):
            assert name.decode() == f"row{int(x[0]) // 2}"
    assert sorted(int(x[0]) // 2 for b in batches for x in b["x"].numpy()) == list(range(10))
    assert [len(b["x"]) for b in pipeline.make_dataset(feats, 4, shuffle=True, seed=1, drop_remainder=True)] == [4, 4]
