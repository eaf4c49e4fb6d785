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


@pytest.mark.parametrize("sets", [
    ["model.history_encoder=gru"],
    ["retrieval.num_sampled=1"],
    ["retrieval.sampling=uniform"],
    ["data.interactions.query_history_items=1"],
    ["eval.cold_items_fraction=0.49"],
    ["eval.cold_items_fraction=0.01"],
    ["retrieval.negatives=in_batch", "retrieval.cross_replica_negatives=true"],
])
def test_values_just_inside_each_rule_pass(sets):
    """The other side of each refusal above: a rule drawn too tight would refuse these."""
    config.build("movielens", None, sets)
