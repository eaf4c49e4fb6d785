"""A tiny SavedModel that follows tfrec's serving contract, for tests and benchmarks.

It has no BERT: ``query_text`` is hashed into one of ``buckets`` rows of a random
table, the catalog is ``num_items`` ids (``item_00``...) with random embeddings,
and retrieval is tfrec's exact dot-product top-k with exclusion (``tfrec.index.base.exact_search``,
the brute-force index's own search). Signatures:
``serving_default``/``retrieve`` (query_text [b], exclude_item_ids [b, e] ->
item_ids [b, k], scores [b, k]), ``embed_query`` and ``embed_item``.

Usage::

    from tests.helpers.tiny_model import write_tiny_model
    from tfrec.export import layout
    layout.publish_version("/tmp/export/tiny", lambda d: write_tiny_model(d, seed=1))
"""

from __future__ import annotations

import os
from pathlib import Path

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import tensorflow as tf

from tfrec.index import scann_index
from tfrec.index.base import exact_search

_NO_EXCLUSIONS = tf.constant([[]], dtype=tf.string)  # [1, 0], broadcast to [batch, 0]


class TinyRetrievalModel(tf.Module):
    """Hash-embedding query tower + fixed catalog; see the module docstring."""

    def __init__(self, seed: int = 0, num_items: int = 20, dim: int = 8, buckets: int = 64,
                 k: int = 5):
        super().__init__()
        rng = tf.random.Generator.from_seed(seed)
        self.item_ids = tf.constant([f"item_{i:02d}" for i in range(num_items)])
        self.item_embeddings = tf.Variable(rng.normal([num_items, dim]))
        self.query_table = tf.Variable(rng.normal([buckets, dim]))
        self.buckets, self.k = buckets, k

    def _embed_text(self, text: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.query_table, tf.strings.to_hash_bucket_fast(text, self.buckets))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query_text")])
    def embed_query(self, query_text):
        """query_text [b] -> embedding float32 [b, d]."""
        return {"embedding": self._embed_text(query_text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"),
                                  tf.TensorSpec([None], tf.string, name="item_text")])
    def embed_item(self, item_id, item_text):
        """item_id [b], item_text [b] -> embedding float32 [b, d]."""
        return {"embedding": self._embed_text(item_id) + self._embed_text(item_text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query_text"),
                                  tf.TensorSpec([None, None], tf.string, name="exclude_item_ids")])
    def retrieve(self, query_text, exclude_item_ids=_NO_EXCLUSIONS):
        """query_text [b], exclude_item_ids [b, e] ("" pads) -> item_ids [b, k], scores [b, k].

        As in tfrec's export, exclude_item_ids has a default (recorded in the SignatureDef).
        """
        exclude_item_ids = _broadcast_rows(exclude_item_ids, query_text)
        scores, ids = exact_search(self._embed_text(query_text), self.item_embeddings, self.item_ids,
                                   exclude_item_ids, self.k)
        return {"item_ids": ids, "scores": scores}


    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query_text"),
                                  tf.TensorSpec([], tf.float32, name="scale")])
    def scaled_embed_query(self, query_text, scale=tf.constant(1.0)):
        """query_text [b], optional scalar scale -> embedding * scale (a defaulted input)."""
        return {"embedding": self._embed_text(query_text) * scale}


def _broadcast_rows(exclude_item_ids: tf.Tensor, query_text: tf.Tensor) -> tf.Tensor:
    shape = tf.stack([tf.shape(query_text)[0], tf.shape(exclude_item_ids)[1]])
    return tf.broadcast_to(exclude_item_ids, shape)


class TinyScannModel(TinyRetrievalModel):
    """The same model, retrieving through a TFRS ScaNN index (``Scann>*`` ops)."""

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        import tensorflow_recommenders as tfrs

        n = int(self.item_ids.shape[0])
        self.index = tfrs.layers.factorized_top_k.ScaNN(
            k=n, num_leaves=2, num_leaves_to_search=2, num_reordering_candidates=n)
        self.index.index(self.item_embeddings, self.item_ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query_text"),
                                  tf.TensorSpec([None, None], tf.string, name="exclude_item_ids")])
    def retrieve(self, query_text, exclude_item_ids=_NO_EXCLUSIONS):
        """As TinyRetrievalModel.retrieve, via ScaNN over the whole (tiny) catalog."""
        exclude_item_ids = _broadcast_rows(exclude_item_ids, query_text)
        scores, ids = self.index(self._embed_text(query_text))
        excluded = tf.reduce_any(tf.equal(exclude_item_ids[:, :, None], ids[:, None, :]), axis=1)
        top = tf.math.top_k(tf.where(excluded, tf.fill(tf.shape(scores), -1e9), scores), k=self.k)
        return {"item_ids": tf.gather(ids, top.indices, batch_dims=1), "scores": top.values}


def write_tiny_model(export_dir: str | os.PathLike, seed: int = 0, scann: bool = False,
                     **kwargs) -> None:
    """Saves a TinyRetrievalModel (or TinyScannModel) with assets.extra/items.tsv."""
    model = (TinyScannModel if scann else TinyRetrievalModel)(seed=seed, **kwargs)
    signatures = {"serving_default": model.retrieve, "retrieve": model.retrieve,
                  "embed_query": model.embed_query, "embed_item": model.embed_item,
                  "scaled_embed_query": model.scaled_embed_query}
    tf.saved_model.save(model, str(export_dir), signatures=signatures,
                        options=scann_index.save_options())
    extra = Path(export_dir, "assets.extra")
    extra.mkdir(exist_ok=True)
    lines = [f"{i.decode()}\tTiny item number {n}" for n, i in enumerate(model.item_ids.numpy())]
    (extra / "items.tsv").write_text("item_id\ttext\n" + "\n".join(lines) + "\n")
