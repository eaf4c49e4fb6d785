"""retrieve with ``exclude_history``: the request's history ids are left out of its results, on every index kind.

Hand-worked scores: item ``iJJ`` (J = 0..31) embeds to [32 - J, 0.5] and every query to [1, 0], so item J scores
32 - J and the ranking is i00, i01, i02, ... A history id is never returned; its "" padding and an id the catalog
does not hold leave out nothing, and ``exclude_item_ids`` still adds to the history.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfrec import config as config_lib
from tfrec import index as index_lib
from tfrec.errors import ConfigError
from tfrec.export.savedmodel import RetrievalModule, excludes_history

ITEMS = [f"i{j:02d}" for j in range(32)]
EMBEDDINGS = np.array([[32.0 - j, 0.5] for j in range(32)], np.float32)
NONE = tf.constant([[]], tf.string)


class ConstantQuery:
    """A history-only query tower whose every query embeds to [1, 0]: float32 [batch, 2]."""

    encoder = None
    history_encoder = "reads history_item_ids"

    def __call__(self, features, training=False):
        return tf.tile(tf.constant([[1.0, 0.0]]), [tf.shape(features["history_item_ids"])[0], 1])


def index(kind: str, k: int = 3):
    if kind == "brute_force":
        return index_lib.BruteForceIndex(EMBEDDINGS, ITEMS, k)
    if kind == "ivf":  # every partition probed: exact
        return index_lib.IVFIndex(EMBEDDINGS, ITEMS, k, num_partitions=4, nprobe=4)
    return index_lib.ScannIndex(EMBEDDINGS, ITEMS, k, num_leaves=2, num_leaves_to_search=2, reorder_k=32)


def retrieve(module, history, exclude=NONE):
    out = module.retrieve(history_item_ids=tf.constant(history), exclude_item_ids=exclude)
    return out["item_ids"].numpy().astype(str).tolist(), out["scores"].numpy().tolist()


@pytest.mark.parametrize("kind", ["brute_force", "ivf", "scann"])
def test_history_ids_are_left_out_padding_and_unknown_ids_are_not(kind):
    module = RetrievalModule(ConstantQuery(), None, index(kind), [], exclude_history=True)
    # i00 (a history id) is gone; "" (padding) and "nope" (no such item) hide nothing: the next three remain.
    assert retrieve(module, [["i00", "", "nope"]]) == ([["i01", "i02", "i03"]], [[31.0, 30.0, 29.0]])
    assert retrieve(module, [["", ""]]) == ([["i00", "i01", "i02"]], [[32.0, 31.0, 30.0]])
    # exclude_item_ids adds to the history; each row keeps its own history.
    ids, _ = retrieve(module, [["i00"], [""]], exclude=tf.constant([["i02"], ["i01"]]))
    assert ids == [["i01", "i03", "i04"], ["i00", "i02", "i03"]]
    # A history as long as k still leaves k results: k + h candidates are fetched.
    assert retrieve(module, [["i02", "i00", "i01"]])[0] == [["i03", "i04", "i05"]]


def test_off_keeps_the_history():
    module = RetrievalModule(ConstantQuery(), None, index("brute_force"), [], exclude_history=False)
    assert retrieve(module, [["i00", "", "nope"]])[0] == [["i00", "i01", "i02"]]


def test_a_text_only_model_has_no_history_to_leave_out():
    text_only = type("TextQuery", (), {"encoder": "reads query_text", "history_encoder": None})()
    with pytest.raises(ValueError, match="history_item_ids"):
        RetrievalModule(text_only, None, index("brute_force"), [], exclude_history=True)


def cfg(*overrides):
    return config_lib.build(preset="smoke", sets=list(overrides))


def test_the_setting_follows_eval_exclude_seen_unless_given():
    history = ["data.interactions.query_column=null", "data.interactions.query_history_items=3"]
    assert excludes_history(cfg(*history, "eval.exclude_seen=true"))[0] is True
    assert excludes_history(cfg(*history, "eval.exclude_seen=false"))[0] is False
    assert excludes_history(cfg(*history, "eval.exclude_seen=true", "export.exclude_history=false"))[0] is False
    assert excludes_history(cfg(*history, "eval.exclude_seen=false", "export.exclude_history=true"))[0] is True
    assert excludes_history(cfg("eval.exclude_seen=true"))[0] is False  # text queries: nothing to leave out


def test_true_without_history_queries_is_refused():
    with pytest.raises(ConfigError, match="export.exclude_history"):
        cfg("export.exclude_history=true")
