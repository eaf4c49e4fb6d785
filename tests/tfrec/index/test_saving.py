"""Every index saved inside a bigger tf.Module with a tf.function signature and reloaded."""

import tfrec

import numpy as np
import pytest
import tensorflow as tf

from tfrec import index as index_lib

DIM = 32


class Holder(tf.Module):
    """Stands in for the export's module: the index is one attribute among others."""

    def __init__(self, index):
        super().__init__()
        self.index = index
        self.scale = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, DIM]), tf.TensorSpec([None, None], tf.string)])
    def retrieve(self, query_embeddings, exclude_item_ids):
        scores, item_ids = self.index.search(query_embeddings * self.scale, exclude_item_ids)
        return {"scores": scores, "item_ids": item_ids}


def _build(kind, items, ids):
    params = {"ivf": {"nprobe": 6}, "ivf_int8": {"nprobe": 6}}.get(kind, {})
    index, note = index_lib.build_index(kind, items, ids, 10, **params)
    assert note is None and index.kind == kind
    return index


@pytest.mark.parametrize("kind", ["brute_force", "brute_force_int8", "ivf", "ivf_int8", "scann"])
def test_save_load_same_results(kind, clustered_data, tmp_path):
    items, ids, queries = clustered_data
    index = _build(kind, items, ids)
    holder = Holder(index)
    queries = tf.constant(queries[:9])
    exclude = tf.constant([[ids[i], ids[i + 1], ""] for i in range(9)])
    no_exclude = tf.zeros([9, 0], tf.string)
    before = [holder.retrieve(queries, e) for e in (exclude, no_exclude)]
    options = index_lib.save_options_for(index)
    tf.saved_model.save(holder, str(tmp_path), signatures={"serving_default": holder.retrieve}, options=options)
    del holder, index

    loaded = tf.saved_model.load(str(tmp_path))
    for e, want in zip((exclude, no_exclude), before):
        got = loaded.retrieve(queries, e)
        np.testing.assert_array_equal(got["item_ids"].numpy(), want["item_ids"].numpy())
        np.testing.assert_allclose(got["scores"].numpy(), want["scores"].numpy(), rtol=1e-6)
    # The serving signature too, with a different batch size and e.
    out = loaded.signatures["serving_default"](
        query_embeddings=queries[:1], exclude_item_ids=tf.constant([[want["item_ids"][0, 0].numpy()]])
    )
    assert out["item_ids"].shape == (1, 10)
    assert want["item_ids"][0, 0].numpy() not in out["item_ids"].numpy()[0]


def test_search_module_round_trip(clustered_data, tmp_path):
    items, ids, queries = clustered_data
    index = _build("ivf", items, ids)
    want = index.search(queries[:4])[1].numpy()
    index_lib.save(index, tmp_path)
    loaded = tfrec.load_export(tmp_path)
    got = loaded.search(tf.constant(queries[:4]), tf.zeros([4, 0], tf.string))[1].numpy()
    np.testing.assert_array_equal(got, want)
    assert index_lib.save_options_for(index) is None


def _saved_ops(path) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


@pytest.mark.parametrize("kind", ["brute_force", "brute_force_int8", "ivf", "ivf_int8"])
def test_core_indexes_use_only_core_ops(kind, clustered_data, tmp_path):
    # Stock TF Serving has exactly TF's own kernels: every op must be in tf.raw_ops.
    items, ids, _ = clustered_data
    index_lib.save(_build(kind, items, ids), tmp_path)
    ops = _saved_ops(tmp_path)
    assert "MatMul" in ops and not {op for op in ops if not hasattr(tf.raw_ops, op)}
    if kind.endswith("_int8") or kind == "ivf":  # int8 codes, cast to float32 in the graph
        assert "Cast" in ops


def test_scann_saved_model_needs_scann_ops(clustered_data, tmp_path):
    items, ids, _ = clustered_data
    index_lib.save(_build("scann", items, ids), tmp_path)
    assert any(op.startswith("Scann>") for op in _saved_ops(tmp_path))
