"""RatedHistory: the ranking head's reading of the user's labels of the history items."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec.encoders.rated_history import RatedHistory
from tfrec.ranking import RankingHead

A, B, C = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]  # unit vectors; A . C = 0.6, B . C = 0.8


def inputs(labels=(5.0, 1.0), mask=(True, True)):
    """One row: candidate C, history [A, B] (most recent first) rated ``labels``."""
    return (tf.constant([C]), tf.constant([[A, B]]), tf.constant([list(labels)], tf.float32),
            tf.constant([list(mask)]))


def fresh(max_length=2, **kwargs) -> RatedHistory:
    """A new layer whose usual label of every item is 3 (e(x) = 0 . x + 3)."""
    layer = RatedHistory(max_length, **kwargs)
    layer(*inputs())
    layer.usual.set_weights([np.zeros([2, 1], np.float32), np.array([3.0], np.float32)])
    return layer


def test_outputs_by_hand():
    layer = fresh()
    out = layer(*inputs()).numpy()[0]
    # Fresh layer: similarity = 5 (c . h_j), position biases 0. Weights softmax([3, 4]) = [w, 1 - w].
    w = math.exp(3.0) / (math.exp(3.0) + math.exp(4.0))
    attended = w * 5.0 + (1 - w) * 1.0
    # recency: equal weights; mean 3; both of the 2 slots rated; nearest cosine 0.8; usual label 3;
    # residuals [5 - 3, 1 - 3] = [2, -2]: attended 2w - 2(1 - w), recency and mean 0.
    np.testing.assert_allclose(out[:9], [attended, 3.0, 3.0, 1.0, 0.8, 3.0, 2 * w - 2 * (1 - w), 0.0, 0.0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[9:], [w * 1.0 + (1 - w) * 0.0, w * 0.0 + (1 - w) * 1.0], rtol=1e-5)
    layer.recency_bias.assign([math.log(3.0), 0.0])  # the most recent item counts 3 times as much
    np.testing.assert_allclose(layer(*inputs()).numpy()[0, 1], 0.75 * 5.0 + 0.25 * 1.0, rtol=1e-5)


def test_unknown_labels_and_padding_are_left_out():
    layer = fresh()
    only_a = layer(*inputs(labels=(5.0, float("nan")))).numpy()[0]
    # Only A is rated: every weight on it (mean 5, attended 5, 1 of 2 slots, cosine 0.6, usual 3,
    # residual 2 three ways, embedding A).
    np.testing.assert_allclose(only_a, [5.0, 5.0, 5.0, 0.5, 0.6, 3.0, 2.0, 2.0, 2.0, 1.0, 0.0], rtol=1e-5)
    padded = layer(*inputs(labels=(5.0, 1.0), mask=(True, False))).numpy()[0]
    np.testing.assert_allclose(padded, only_a, rtol=1e-5)
    nothing = layer(*inputs(labels=(float("nan"), float("nan")))).numpy()[0]
    # Nothing rated: only the candidate's own usual label is left.
    assert np.isfinite(nothing).all() and nothing[5] == 3.0 and not np.delete(nothing, 5).any()


def test_longer_history_keeps_the_most_recent():
    layer = fresh()
    c, items, labels, mask = inputs()
    longer = layer(c, tf.concat([items, [[C]]], 1), tf.concat([labels, [[3.0]]], 1),
                   tf.concat([mask, [[True]]], 1)).numpy()
    np.testing.assert_allclose(longer, layer(c, items, labels, mask).numpy(), rtol=1e-6)


def test_label_dropout_hides_whole_rows_in_training_only():
    tf.keras.utils.set_random_seed(0)
    layer = fresh(label_dropout=0.5)
    c, items, labels, mask = (tf.repeat(t, 200, axis=0) for t in inputs())
    train = layer(c, items, labels, mask, training=True).numpy()
    hidden = (train[:, 3] == 0)
    assert 60 < hidden.sum() < 140 and not np.delete(train[hidden], 5, axis=1).any()
    assert (layer(c, items, labels, mask).numpy()[:, 3] == 1.0).all()


def test_save_and_reload(tmp_path):
    layer = fresh(label_dropout=0.2)
    layer.recency_bias.assign([0.3, -0.1])
    before = layer(*inputs()).numpy()
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(json.loads(json.dumps(tf.keras.layers.serialize(layer))))
    assert type(clone) is RatedHistory and clone.get_config() == layer.get_config()
    clone(*inputs())
    tf.train.Checkpoint(layer=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(*inputs()).numpy(), before, atol=1e-6)


def test_head_with_rated_history_save_reload_and_labels_matter(tmp_path):
    tf.keras.utils.set_random_seed(2)
    head = RankingHead("mlp", [8], rated_history_length=2, name="ranking_head")
    head.build_variables(2)
    c, items, labels, mask = inputs()
    q = tf.constant([B])
    history = {"items": items, "labels": labels, "mask": mask}
    before = head(q, c, history=history).numpy()
    flipped = head(q, c, history=dict(history, labels=tf.constant([[1.0, 5.0]]))).numpy()
    assert abs(before[0] - flipped[0]) > 1e-4  # the labels reach the score
    # No history given = nothing rated.
    np.testing.assert_allclose(head(q, c).numpy(), head(q, c, history=dict(history, mask=tf.constant(
        [[False, False]]))).numpy(), atol=1e-6)
    path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(json.loads(json.dumps(tf.keras.layers.serialize(head))))
    assert clone.get_config() == head.get_config() and clone.rated_history.max_length == 2
    clone.build_variables(2)
    tf.train.Checkpoint(head=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(q, c, history=history).numpy(), before, atol=1e-6)


def test_config_needs_a_history_query():
    from tfrec import config as config_lib
    from tfrec.errors import ConfigError

    with pytest.raises(ConfigError, match="ranking.extra_features"):
        config_lib.build("movielens_multitask", None, ["ranking.extra_features=[rated_history]",
                                                       "model.history_encoder=text"])
    cfg = config_lib.build("movielens_multitask", None, ["ranking.extra_features=[rated_history]",
                                                         "model.history_encoder=attention"])
    assert cfg.ranking.extra_features == ["rated_history"]
