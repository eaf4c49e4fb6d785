"""``rank`` and ``retrieve_and_rank`` of a model whose query is text and/or history items, with a ranking head
that reads the user's labels of the history items: the SavedModel against the Python model, then served over
REST and gRPC through ``serving.client`` (text only, history only, both, labels, exclusions)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.servers import http, running_server
from tfrec import index as index_lib
from tfrec.encoders.history import make_history_encoder
from tfrec.export.catalog_lookup import CatalogLookup
from tfrec.export.savedmodel import RetrievalModule
from tfrec.ranking import RankingHead
from tfrec.towers import ItemTower, QueryTower

ITEMS = ["i1", "i2", "i3", "i4", "i5"]
HISTORY = [["i3", "i1", ""]]
LABELS = [[5.0, 1.0, 0.0]]


def build(tiny_encoder, with_text: bool = True):
    """A text+history (or history-only) query tower, a DCN-free MLP head with rated_history, k=3 retrieval."""
    tf.keras.utils.set_random_seed(5)
    item = ItemTower(ITEMS, 3, tiny_encoder, {}, 2, [8], 4, name="item_tower")
    texts = ["rocket", "ghost", "jazz", "space", "piano"]
    item.set_catalog({"item_id": np.array(ITEMS, object), "item_text_encoding": tiny_encoder.encode_texts(texts)})
    query = QueryTower(tiny_encoder if with_text else None, [8], 4,
                       history_encoder=make_history_encoder("attention", 3, 4), history_length=3, name="query")
    query.attach_item_tower(item)
    head = RankingHead("mlp", [8], rated_history_length=3, name="ranking_head")
    head.build_variables(4)
    items = item.embed_rows(tf.range(len(ITEMS), dtype=tf.int64)).numpy()
    catalog = CatalogLookup(ITEMS, items, {})
    module = RetrievalModule(query, item, index_lib.BruteForceIndex(items, ITEMS, 3), [], head, catalog)
    return module, query, head, items


def python_rank(query, head, items, features, candidates, labels=None):
    """The Python model's scores of ``candidates`` (ids) for one query, float32 [c]."""
    q = query({k: tf.constant(v) for k, v in features.items()})
    rows = [ITEMS.index(i) for i in candidates]
    c = len(rows)
    history = None
    if "history_item_ids" in features and labels is not None:
        hist_rows = np.array([[ITEMS.index(i) if i else -1 for i in features["history_item_ids"][0]]])
        history = {"items": tf.constant(np.repeat(items[np.maximum(hist_rows, 0)], c, axis=0)),
                   "labels": tf.constant(np.repeat(np.array(labels, np.float32), c, axis=0)),
                   "mask": tf.constant(np.repeat(hist_rows >= 0, c, axis=0))}
    return head.score(tf.repeat(q, c, axis=0), tf.constant(items[rows]), history=history).numpy()


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_encoder):
    module, query, head, items = build(tiny_encoder)
    base = tmp_path_factory.mktemp("rank_history") / "hist"
    tf.saved_model.save(module, str(base / "1"), signatures=module.signatures())
    return module, query, head, items, str(base)


def test_signature_inputs_and_defaults(published):
    from tensorflow.python.saved_model import loader_impl

    *_, base = published
    defs = loader_impl.parse_saved_model(base + "/1").meta_graphs[0].signature_def
    query = {"query_text", "history_item_ids", "history_labels"}
    assert set(defs["rank"].inputs) == query | {"item_ids"} and set(defs["rank"].defaults) == query
    both = defs["retrieve_and_rank"]
    assert set(both.inputs) == query | {"exclude_item_ids"} and set(both.defaults) == query | {"exclude_item_ids"}
    assert "history_labels" not in defs["serving_default"].inputs  # retrieval does not read labels


def test_rank_matches_the_python_model(published):
    module, query, head, items, _ = published
    candidates = [["i2", "i4", "i5"]]
    cases = {"text": ({"query_text": ["rocket"]}, None),
             "history": ({"history_item_ids": HISTORY}, None),
             "history+labels": ({"history_item_ids": HISTORY}, LABELS),
             "both+labels": ({"query_text": ["rocket"], "history_item_ids": HISTORY}, LABELS)}
    scores = {}
    for name, (features, labels) in cases.items():
        feed = {k: tf.constant(v) for k, v in features.items()}
        if labels is not None:
            feed["history_labels"] = tf.constant(labels)
        scores[name] = module.rank(item_ids=tf.constant(candidates), **feed)["scores"].numpy()[0]
        np.testing.assert_allclose(scores[name], python_rank(query, head, items, features, candidates[0], labels),
                                   rtol=1e-4, atol=1e-5)
    assert np.abs(scores["history"] - scores["history+labels"]).max() > 1e-4  # the labels reach the score
    out = module.rank(query_text=tf.constant(["rocket"]), item_ids=tf.constant([["i2", "", "nope"]]))["scores"]
    assert np.isfinite(out[0, 0]) and out[0, 1] == -np.inf and out[0, 2] == -np.inf


def test_history_only_model_exports_rank(tiny_encoder):
    module, query, head, items = build(tiny_encoder, with_text=False)
    names = set(module.rank.input_signature[i].name for i in range(len(module.rank.input_signature)))
    assert names == {"item_ids", "history_item_ids", "history_labels"}
    got = module.rank(item_ids=tf.constant([["i2"]]), history_item_ids=tf.constant(HISTORY),
                      history_labels=tf.constant(LABELS))["scores"].numpy()[0]
    np.testing.assert_allclose(got, python_rank(query, head, items, {"history_item_ids": HISTORY}, ["i2"], LABELS),
                               rtol=1e-4, atol=1e-5)


def test_rest_and_grpc_through_the_client(published):
    from serving.client import GrpcClient, RestClient

    module, *_, base = published

    def direct(signature, **kwargs):
        feed = {k: tf.constant(v) for k, v in kwargs.items()}
        out = getattr(module, signature)(**feed)
        ids = [i.decode() for i in out["item_ids"].numpy()[0]]
        return list(zip(ids, out["ranking_scores" if signature == "retrieve_and_rank" else "scores"].numpy()[0]))

    cases = {"text": ({"query_text": ["rocket"]}, dict(queries=["rocket"])),
             "history": ({"history_item_ids": HISTORY, "history_labels": LABELS},
                         dict(history=[["i3", "i1"]], history_labels=[[5.0, 1.0]])),
             "both": ({"query_text": ["rocket"], "history_item_ids": HISTORY},
                      dict(queries=["rocket"], history=[["i3", "i1"]]))}
    with running_server({"hist": base}, poll_wait_s=0.2) as server:
        clients = [RestClient("127.0.0.1", server.rest_port, "hist"),
                   GrpcClient("127.0.0.1", server.grpc_port, "hist")]
        try:
            for name, (feed, client_args) in cases.items():
                for signature in ("retrieve", "retrieve_and_rank"):
                    inputs, args = feed, client_args
                    if signature == "retrieve":  # retrieval reads no labels
                        inputs = {k: v for k, v in feed.items() if k != "history_labels"}
                        args = {k: v for k, v in client_args.items() if k != "history_labels"}
                    want = direct(signature, **inputs)
                    for client in clients:
                        got = client.retrieve(signature_name=signature, **args)[0]
                        assert [i for i, _ in got] == [i for i, _ in want], (name, signature, type(client))
                        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-5)
                top = want[0][0]
                for client in clients:  # exclusions, ranked: the top item is gone, the rest still ranked
                    got = client.retrieve(signature_name="retrieve_and_rank", exclude=[[top]], **client_args)[0]
                    assert top not in [i for i, _ in got] and len(got) == 3
                    scores = [s for _, s in got]
                    assert scores == sorted(scores, reverse=True)
            for client in clients:
                ranked = client.predict({"item_ids": [["i2", "i4"]], "history_item_ids": [["i3", "i1"]],
                                         "history_labels": np.array([[5.0, 1.0]], np.float32)}, "rank")["scores"]
                want = module.rank(item_ids=tf.constant([["i2", "i4"]]), history_item_ids=tf.constant(HISTORY),
                                   history_labels=tf.constant(LABELS))["scores"].numpy()
                np.testing.assert_allclose(ranked, want, rtol=1e-4, atol=1e-5)
        finally:
            clients[1].close()


def test_rest_row_form_pads_histories_of_different_lengths(published):
    module, *_, base = published
    instances = [{"history_item_ids": ["i3", "i1"], "history_labels": [5.0, 1.0], "item_ids": ["i2", "i4"]},
                 {"history_item_ids": [], "history_labels": [], "item_ids": ["i5", "i1"]}]
    want = module.rank(item_ids=tf.constant([["i2", "i4"], ["i5", "i1"]]),
                       history_item_ids=tf.constant([["i3", "i1"], ["", ""]]),
                       history_labels=tf.constant([[5.0, 1.0], [0.0, 0.0]]))["scores"].numpy()
    with running_server({"hist": base}, poll_wait_s=0.2) as server:
        status, body = http(server.rest_port, "/v1/models/hist:predict",
                            {"signature_name": "rank", "instances": instances})
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["predictions"]), want, rtol=1e-4, atol=1e-5)
