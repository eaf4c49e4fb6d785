"""Config keys of the history path, the negatives modes and the cold-item evaluation: one-line errors."""

import pytest

from tfrec import config
from tfrec.errors import ConfigError


@pytest.mark.parametrize("sets, key", [
    (["model.history_encoder=lstm"], "model.history_encoder"),
    (["retrieval.negatives=hard"], "retrieval.negatives"),
    (["retrieval.num_sampled=0"], "retrieval.num_sampled"),
    (["retrieval.sampling=zipf"], "retrieval.sampling"),
    (["data.interactions.query_history_items=0"], "data.interactions.query_history_items"),
    (["eval.cold_items_fraction=0.5"], "eval.cold_items_fraction"),
    (["eval.cold_items_fraction=0"], "eval.cold_items_fraction"),
    (["retrieval.negatives=full", "retrieval.cross_replica_negatives=true"], "retrieval.cross_replica_negatives"),
])
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(ConfigError) as err:
        config.build("movielens", None, sets)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_defaults_and_the_movielens_preset():
    cfg = config.build("smoke")
    assert (cfg.retrieval.negatives, cfg.model.history_encoder, cfg.eval.cold_items_fraction) == (
        "in_batch", "attention", None)
    ml = config.build("movielens", None, ["eval.cold_items_fraction=0.1", "retrieval.negatives=mixed"])
    assert ml.eval.cold_items_fraction == 0.1 and ml.retrieval.negatives == "mixed"
