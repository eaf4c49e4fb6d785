"""History encoders and the query tower's history path, on hand-checkable tiny inputs."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec.encoders.history import AttentionHistory, MeanHistory, make_history_encoder
from tfrec.towers import ItemTower, QueryTower

A, B = [1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 4.0]
PAD = [99.0, 99.0, 99.0, 99.0]  # padding values must never reach the output


def histories():
    items = tf.constant([[A, B, PAD], [B, PAD, PAD], [PAD, PAD, PAD]])
    mask = tf.constant([[True, True, False], [True, False, False], [False, False, False]])
    return items, mask


def test_mean_by_hand():
    # Row 0: (A + B) / 2 = [2, 1, 0, 2]; row 1: B; row 2 (empty): zeros.
    out = MeanHistory()(*histories()).numpy()
    np.testing.assert_allclose(out, [[2, 1, 0, 2], B, [0, 0, 0, 0]])


def test_attention_by_hand():
    # Scores zeroed, position biases [ln 3, 0, 0]: weights over the two real items are
    # [3/4, 1/4], so row 0 = 0.75 A + 0.25 B = [1.5, 1.5, 0, 1]; row 1 = B; the empty row = zeros.
    layer = AttentionHistory(max_length=3, hidden=2)
    layer(*histories())
    layer.score.set_weights([np.zeros([2, 1], np.float32)])
    layer.position_bias.assign([np.log(3.0), 0.0, 0.0])
    np.testing.assert_allclose(layer(*histories()).numpy(), [[1.5, 1.5, 0, 1], B, [0, 0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("name", ["mean", "attention", "gru", "transformer"])
def test_padding_is_ignored_and_empty_is_finite(name):
    tf.keras.utils.set_random_seed(1)
    layer = make_history_encoder(name, max_length=3, dim=4, dropout=0.0)
    items, mask = histories()
    out = layer(items, mask).numpy()
    other_pad = tf.where(mask[..., None], items, -7.0 * tf.ones_like(items))
    np.testing.assert_allclose(layer(other_pad, mask).numpy(), out, atol=1e-5)
    assert out.shape == (3, 4) and np.isfinite(out).all()
    np.testing.assert_allclose(out[2], 0.0)  # an empty history


@pytest.mark.parametrize("name", ["attention", "gru", "transformer"])
def test_order_matters(name):
    # The same two items, most recent first, in the other order: a sequence encoder must tell them apart.
    tf.keras.utils.set_random_seed(2)
    layer = make_history_encoder(name, max_length=2, dim=4, dropout=0.0)
    mask = tf.constant([[True, True]])
    if name == "attention":  # its recency biases start at zero (order-blind) and are learned
        layer(tf.constant([[A, B]]), mask)
        layer.position_bias.assign([1.0, 0.0])
    ab, ba = layer(tf.constant([[A, B]]), mask).numpy(), layer(tf.constant([[B, A]]), mask).numpy()
    assert np.abs(ab - ba).max() > 1e-4


@pytest.mark.parametrize("name", ["mean", "attention", "gru", "transformer"])
def test_save_and_reload(tmp_path, name):
    tf.keras.utils.set_random_seed(3)
    layer = make_history_encoder(name, max_length=3, dim=4, dropout=0.1)
    items, mask = histories()
    before = layer(items, mask).numpy()
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone(items, mask)
    tf.train.Checkpoint(layer=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(items, mask).numpy(), before, atol=1e-6)


def test_unknown_encoder_names_the_key():
    with pytest.raises(ValueError, match="model.history_encoder"):
        make_history_encoder("lstm", 3, 4)


# ------------------------------------------------------------ the query tower's history path
ITEMS = ["i1", "i2", "i3"]


def towers(text_encoder=None, query_encoder=None, history="mean"):
    item = ItemTower(ITEMS, 3, text_encoder, {"genre": ["space", "horror"]}, 2, [8], 4, name="item_tower")
    feats = {"item_id": np.array(ITEMS, object), "item_genre": np.array(["space", "horror", "jazz"], object)}
    if text_encoder is not None:
        feats["item_text_encoding"] = text_encoder.encode_texts(["rocket", "ghost", "jazz"])
    item.set_catalog(feats)
    encoder = make_history_encoder(history, 2, 4, 0.0) if history else None
    query = QueryTower(query_encoder, [8], 4, history_encoder=encoder, history_length=2, name="query_tower")
    query.attach_item_tower(item)
    return query, item, feats


def test_embed_rows_equals_the_item_tower_on_the_same_items():
    query, item, feats = towers()
    direct = item({"item_id": tf.constant(["i3", "i1"]), "item_genre": tf.constant(["jazz", "space"])}).numpy()
    np.testing.assert_allclose(item.embed_rows(tf.constant([2, 0], tf.int64)).numpy(), direct, atol=1e-6)


def test_history_rows_and_string_ids_agree_and_mean_is_the_item_mean():
    # A history [i3, i1] pooled by the mean encoder is the mean of the two item-tower vectors,
    # then the head; string ids ("" = padding) and int rows (-1 = padding) give the same query.
    query, item, _ = towers()
    by_rows = query({"history_item_ids": tf.constant([[2, 0], [1, -1]], tf.int64)}).numpy()
    by_ids = query({"history_item_ids": tf.constant([["i3", "i1"], ["i2", ""]])}).numpy()
    np.testing.assert_allclose(by_rows, by_ids, atol=1e-6)
    vectors = item.embed_rows(tf.constant([2, 0], tf.int64))
    expected = tf.math.l2_normalize(query.head(tf.reduce_mean(vectors, 0, keepdims=True)), -1).numpy()
    np.testing.assert_allclose(by_rows[:1], expected, atol=1e-6)


def test_text_only_history_only_and_both(tiny_encoder):
    query, _, _ = towers(text_encoder=tiny_encoder, query_encoder=tiny_encoder)
    text = {"query_text": tf.constant(["rocket"])}
    history = {"history_item_ids": tf.constant([[2, 0]], tf.int64)}
    outs = [query(f).numpy() for f in (text, history, {**text, **history})]
    for out in outs:
        assert out.shape == (1, 4)
        np.testing.assert_allclose(np.linalg.norm(out), 1.0, atol=1e-5)
    assert np.abs(outs[0] - outs[2]).max() > 1e-4 and np.abs(outs[1] - outs[2]).max() > 1e-4
    with pytest.raises(ValueError, match="query_text or history_item_ids"):
        query({"item_id": tf.constant(["i1"])})


def test_query_tower_with_history_reloads(tmp_path):
    query, item, _ = towers(history="transformer")
    feats = {"history_item_ids": tf.constant([[2, 0]], tf.int64)}
    before = query(feats).numpy()
    path = tf.train.Checkpoint(query=query, item=item).save(str(tmp_path / "ckpt"))
    clone_item = tf.keras.layers.deserialize(tf.keras.layers.serialize(item))
    clone_item.set_catalog(towers()[2])
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(query))
    clone.attach_item_tower(clone_item)
    clone(feats)
    tf.train.Checkpoint(query=clone, item=clone_item).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(feats).numpy(), before, atol=1e-6)
