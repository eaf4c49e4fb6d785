"""serving_default with history: query text only, history only, both, and exclusions, after save and load.

Python's wrapper of a loaded signature wants every input (TF Serving applies the
SignatureDef's defaults); omitting one is checked on the module's own functions.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfrec import index as index_lib
from tfrec.encoders.history import make_history_encoder
from tfrec.export.savedmodel import RetrievalModule
from tfrec.towers import ItemTower, QueryTower

ITEMS = ["i1", "i2", "i3", "i4"]
NONE = tf.constant([[]], tf.string)  # no exclusions, broadcast to [batch, 0]


def module(tiny_encoder, with_text: bool):
    tf.keras.utils.set_random_seed(4)
    item = ItemTower(ITEMS, 3, tiny_encoder, {}, 2, [8], 4, name="item_tower")
    texts = ["rocket", "ghost", "jazz", "space"]
    item.set_catalog({"item_id": np.array(ITEMS, object), "item_text_encoding": tiny_encoder.encode_texts(texts)})
    query = QueryTower(tiny_encoder if with_text else None, [8], 4,
                       history_encoder=make_history_encoder("attention", 3, 4), history_length=3, name="query")
    query.attach_item_tower(item)
    items = item.embed_rows(tf.range(4, dtype=tf.int64)).numpy()
    return RetrievalModule(query, item, index_lib.BruteForceIndex(items, ITEMS, 2), []), query


def saved(tmp_path, mod):
    tf.saved_model.save(mod, str(tmp_path / "m"), signatures=mod.signatures())
    return tf.saved_model.load(str(tmp_path / "m")).signatures


def test_history_only_signature(tmp_path, tiny_encoder):
    mod, query = module(tiny_encoder, with_text=False)
    sigs = saved(tmp_path, mod)
    history = tf.constant([["i3", "i1", ""], ["i2", "", ""]])
    out = sigs["serving_default"](history_item_ids=history, exclude_item_ids=NONE)
    expected = query({"history_item_ids": history}).numpy()
    np.testing.assert_allclose(sigs["embed_query"](history_item_ids=history)["embedding"].numpy(), expected,
                               atol=1e-5)
    # Served top 2 = the best two of the Python query embeddings against the catalog.
    want = np.array(ITEMS)[np.argsort(-expected @ mod.index.item_embeddings.numpy().T, axis=1)[:, :2]]
    np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), want)
    top = out["item_ids"].numpy()[0, 0]
    excluded = sigs["serving_default"](history_item_ids=history, exclude_item_ids=tf.constant([[top], [b""]]))
    assert top not in excluded["item_ids"].numpy()[0]
    assert "query_text" not in sigs["serving_default"].structured_input_signature[1]


def test_text_history_or_both(tmp_path, tiny_encoder):
    mod, query = module(tiny_encoder, with_text=True)
    sigs = saved(tmp_path, mod)
    text, history = tf.constant(["rocket"]), tf.constant([["i3", "i1", ""]])
    no_text, no_history = tf.constant([""]), tf.constant([[""]])
    cases = {"text": dict(query_text=text, history_item_ids=no_history),
             "history": dict(query_text=no_text, history_item_ids=history),
             "both": dict(query_text=text, history_item_ids=history)}
    served = {name: sigs["embed_query"](**kwargs)["embedding"].numpy() for name, kwargs in cases.items()}
    np.testing.assert_allclose(served["both"], query({"query_text": text, "history_item_ids": history}).numpy(),
                               atol=1e-5)
    # Empty text or history contributes nothing, the same as leaving the input out.
    np.testing.assert_allclose(served["text"], mod.embed_query(query_text=text)["embedding"].numpy(), atol=1e-5)
    np.testing.assert_allclose(served["history"], mod.embed_query(history_item_ids=history)["embedding"].numpy(),
                               atol=1e-5)
    assert np.abs(served["text"] - served["both"]).max() > 1e-4
    for kwargs in cases.values():
        assert sigs["serving_default"](**kwargs, exclude_item_ids=NONE)["item_ids"].shape == (1, 2)
