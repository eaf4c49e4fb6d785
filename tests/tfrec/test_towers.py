"""tfrec/towers.py: the query and item towers (shapes, cached encodings, save and reload)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec.encoders.text import BertTextEncoder
from tfrec.towers import ItemTower, QueryTower

ITEMS = ["i1", "i2", "i3"]


def item_batch():
    return {"item_id": tf.constant(["i1", "i3", "unknown"]), "item_text": tf.constant(["rocket", "ghost", "jazz"]),
            "item_genre": tf.constant(["space", "horror", "music"])}


def make_towers(encoder):
    query = QueryTower(encoder, [8], 4, name="query_tower")
    item = ItemTower(ITEMS, 3, encoder, {"genre": ["space", "horror"]}, 2, [8], 4, name="item_tower")
    return query, item


def test_tower_shapes_and_unit_norm(tiny_encoder):
    query, item = make_towers(tiny_encoder)
    q = query({"query_text": tf.constant(["rocket", "ghost"])})
    c = item(item_batch())
    assert q.shape == (2, 4) and c.shape == (3, 4)
    np.testing.assert_allclose(tf.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tf.norm(c, axis=1), 1.0, atol=1e-5)


def test_cached_encoding_feature_equals_text(tiny_encoder):
    query, _ = make_towers(tiny_encoder)
    texts = ["rocket star", "looking for jazz"]
    direct = query({"query_text": tf.constant(texts)})
    cached = query({"query_text_encoding": tf.constant(tiny_encoder.encode_texts(texts))})
    np.testing.assert_allclose(direct, cached, atol=1e-5)


@pytest.mark.parametrize("tower", ["query", "item"])
def test_tower_save_and_reload(tmp_path, tower):
    encoder = BertTextEncoder("random://tiny", max_length=8, trainable_layers=1, seed=5)
    query, item = make_towers(encoder)
    layer, features = (query, {"query_text": tf.constant(["rocket"])}) if tower == "query" else (item, item_batch())
    before = layer(features).numpy()
    path = tf.train.Checkpoint(tower=layer).save(str(tmp_path / "ckpt"))
    config = tf.keras.layers.serialize(layer)
    clone = tf.keras.layers.deserialize(config)
    assert type(clone) is type(layer)
    clone(features)
    tf.train.Checkpoint(tower=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(features).numpy(), before, atol=1e-6)
