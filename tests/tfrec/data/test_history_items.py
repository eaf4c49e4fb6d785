"""History as item rows (``Examples.history``) and the cold-item hold-out."""

import numpy as np

from tfrec import config
from tfrec.data import dataset
from tests.tfrec.data.test_dataset import make_cfg, rows


def history_cfg(tmp_path, n_users=1, per_user=4, depth=2, **changes):
    return config.updated(make_cfg(tmp_path, rows(n_users=n_users, per_user=per_user)), {
        "data.interactions.query_column": None, "data.interactions.query_history_items": depth,
        "data.interactions.query_history_columns": ["title"], **changes})


def test_history_rows_most_recent_first_and_padded(tmp_path):
    # u0 saw i1, i2, i3, i4 (catalog rows 0..3). Train holds i2 (history [i1]), validation i3, test i4.
    data = dataset.load(history_cfg(tmp_path).data)
    np.testing.assert_array_equal(data.test.history, [[2, 1]])  # before i4: i3 (latest), then i2
    np.testing.assert_array_equal(data.validation.history, [[1, 0]])
    np.testing.assert_array_equal(data.train.history, [[0, -1]])  # one item, then padding
    assert data.test.query_text == ["Gamma; Beta"]  # the text form reads the same items


def test_cold_items_leave_training_validation_and_their_histories(tmp_path):
    data = dataset.load(history_cfg(tmp_path, n_users=4, per_user=4, depth=3).data)
    warm = dataset.hold_out_cold_items(data, 0.25, seed=0)
    cold = warm.cold_items
    assert len(cold) == 1  # a quarter of 4 items
    cold_id = data.catalog.item_ids[cold[0]]
    for split in (warm.train, warm.validation):
        assert cold_id not in split.item_id
        assert not np.isin(split.history, cold).any()
        for row in split.history:  # padding only at the tail
            real = row >= 0
            assert not np.any(~real[:-1] & real[1:])
    assert warm.test.item_id == data.test.item_id  # the test split is untouched
    assert len(warm.train) == sum(i != cold_id for i in data.train.item_id)
    cold_again = dataset.hold_out_cold_items(data, 0.25, seed=0).cold_items
    np.testing.assert_array_equal(cold, cold_again)  # seeded


def test_query_text_and_history_together(tmp_path):
    cfg = history_cfg(tmp_path, **{"data.interactions.query_column": "query"})
    data = dataset.load(cfg.data)
    # With a query column every interaction is usable (the first one with an empty history).
    assert data.test.query_text == ["query 0 3"] and len(data.train) == 2
    np.testing.assert_array_equal(data.test.history, [[2, 1]])
    np.testing.assert_array_equal(data.train.history, [[-1, -1], [0, -1]])
