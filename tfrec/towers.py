"""The two towers. Each maps a dict of features to L2-normalised embeddings.

Feature names (all tensors have a leading batch dimension):

* ``query_text``: string [batch], or ``query_text_encoding``: float32
  [batch, hidden] when the frozen encoder's output was cached.
* ``item_id``: string [batch]; ``item_text``: string [batch] or
  ``item_text_encoding``: float32 [batch, hidden]; ``item_<column>``: string
  [batch] per categorical column.

Host-preprocessed form (TPUs have no string ops, XLA compiles no lookups):
:func:`host_features`, run inside ``tf.data`` on the host, replaces
``query_text`` / ``item_text`` with ``query_input_ids`` + ``query_attention_mask``
/ ``item_input_ids`` + ``item_attention_mask`` (int32 [batch, max_length]) and
``item_id`` / ``item_<column>`` with their int64 lookup indices (the rows the
towers' own ``StringLookup`` layers give), so the model sees fixed-shape ints
only. The towers accept either form; exported SavedModels take raw strings.
"""

from __future__ import annotations

import tensorflow as tf

from tfrec.encoders.ids import IdEmbedding
from tfrec.encoders.text import BertTextEncoder


def _mlp(hidden_units: list[int], embedding_dim: int, dropout: float, name: str) -> tf.keras.Sequential:
    layers = []
    for units in hidden_units:
        layers.append(tf.keras.layers.Dense(units, activation="gelu"))
        if dropout:
            layers.append(tf.keras.layers.Dropout(dropout))
    layers.append(tf.keras.layers.Dense(embedding_dim))
    return tf.keras.Sequential(layers, name=name)


def _l2(x: tf.Tensor) -> tf.Tensor:
    # Both towers end in float32 so mixed-precision towers always agree.
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def _encode(encoder: BertTextEncoder, features: dict, name: str, training: bool) -> tf.Tensor:
    if f"{name}_encoding" in features:
        return features[f"{name}_encoding"]
    # A frozen encoder runs without dropout, exactly as its cached outputs were computed.
    training = training and not encoder.frozen
    prefix = name[: -len("_text")]
    if f"{prefix}_input_ids" in features:  # tokenised on the host (host_features)
        return encoder({"input_ids": features[f"{prefix}_input_ids"],
                        "attention_mask": features[f"{prefix}_attention_mask"]}, training=training)
    return encoder(features[name], training=training)


def _embed_ids(layer: IdEmbedding, values: tf.Tensor) -> tf.Tensor:
    """Strings, or their lookup indices already computed on the host (:func:`host_features`)."""
    if values.dtype.is_integer:
        return layer.embedding(tf.reshape(values, [-1]))
    return layer(values)


def host_features(query_tower: "QueryTower", item_tower: "ItemTower", features: dict) -> dict:
    """String features -> fixed-shape int tensors, for ``tf.data.Dataset.map`` on the host.

    ``query_text`` / ``item_text`` -> ``<query|item>_input_ids`` and
    ``<query|item>_attention_mask`` int32 [batch, max_length]; ``item_id`` and
    ``item_<column>`` -> int64 [batch] lookup indices. Other features (cached
    encodings, probabilities, labels) pass through unchanged.
    """
    out = dict(features)
    for name, encoder in (("query_text", query_tower.encoder), ("item_text", item_tower.text_encoder)):
        if name in out and encoder is not None:
            texts = out.pop(name)
            ids, mask = encoder.tokenize(texts)
            static = [texts.shape[0], encoder.max_length]  # the batch size is static after drop_remainder
            ids, mask = tf.ensure_shape(ids, static), tf.ensure_shape(mask, static)
            prefix = name[: -len("_text")]
            out[f"{prefix}_input_ids"], out[f"{prefix}_attention_mask"] = ids, mask
    layers = dict({f"item_{c}": layer for c, layer in item_tower.categorical.items()})
    if item_tower.id_embedding is not None:
        layers["item_id"] = item_tower.id_embedding
    for key, layer in layers.items():
        if key in out and out[key].dtype == tf.string:
            out[key] = layer.lookup(tf.reshape(out[key], [-1]))
    if "item_id" in out and out["item_id"].dtype == tf.string:  # no id embedding: ids only for accidental hits
        out["item_id"] = tf.strings.to_hash_bucket_fast(out["item_id"], 2**62)
    return out


class QueryTower(tf.keras.layers.Layer):
    """Query text -> float32 [batch, embedding_dim], unit length.

    Args:
      encoder: the BERT text encoder (may be shared with the item tower).
      hidden_units: widths of the projection MLP's hidden layers.
      embedding_dim: output width.
      dropout: dropout after each hidden layer.
    """

    def __init__(self, encoder: BertTextEncoder, hidden_units: list[int], embedding_dim: int, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.hidden_units, self.embedding_dim, self.dropout = list(hidden_units), embedding_dim, dropout
        self.head = _mlp(self.hidden_units, embedding_dim, dropout, "query_head")

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        return _l2(self.head(_encode(self.encoder, features, "query_text", training), training=training))

    def project(self, encodings: tf.Tensor) -> tf.Tensor:
        """float32 [batch, hidden] encoder outputs -> [batch, embedding_dim]."""
        return _l2(self.head(encodings))

    def get_config(self) -> dict:
        return {**super().get_config(), "encoder": tf.keras.layers.serialize(self.encoder),
                "hidden_units": self.hidden_units, "embedding_dim": self.embedding_dim, "dropout": self.dropout}

    @classmethod
    def from_config(cls, config: dict) -> "QueryTower":
        config = dict(config, encoder=tf.keras.layers.deserialize(config["encoder"]))
        return cls(**config)


class ItemTower(tf.keras.layers.Layer):
    """Item id + item text + categorical features -> float32 [batch, embedding_dim], unit length.

    Args:
      item_ids: the catalog's ids (the id embedding's vocabulary; others -> OOV).
      id_embedding_dim: id embedding width; 0 leaves ids out.
      text_encoder: a BERT encoder for ``item_text`` (shared or separate), or None.
      categorical_vocabularies: column -> known values.
      categorical_embedding_dim: width of each categorical embedding.
      hidden_units, embedding_dim, dropout: the fusion MLP.
    """

    def __init__(self, item_ids: list[str], id_embedding_dim: int, text_encoder: BertTextEncoder | None,
                 categorical_vocabularies: dict[str, list[str]], categorical_embedding_dim: int,
                 hidden_units: list[int], embedding_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.item_ids, self.id_embedding_dim = list(item_ids), id_embedding_dim
        self.text_encoder = text_encoder
        self.categorical_vocabularies = {k: list(v) for k, v in categorical_vocabularies.items()}
        self.categorical_embedding_dim = categorical_embedding_dim
        self.hidden_units, self.embedding_dim, self.dropout = list(hidden_units), embedding_dim, dropout
        self.id_embedding = IdEmbedding(self.item_ids, id_embedding_dim, name="item_id") if id_embedding_dim else None
        self.categorical = {col: IdEmbedding(vocab, categorical_embedding_dim, name=f"item_{col}")
                            for col, vocab in self.categorical_vocabularies.items()}
        self.head = _mlp(self.hidden_units, embedding_dim, dropout, "item_head")

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        parts = []
        if self.id_embedding is not None:
            parts.append(_embed_ids(self.id_embedding, features["item_id"]))
        if self.text_encoder is not None:
            parts.append(_encode(self.text_encoder, features, "item_text", training))
        for col, layer in self.categorical.items():
            parts.append(_embed_ids(layer, features[f"item_{col}"]))
        fused = tf.concat([tf.cast(p, tf.float32) for p in parts], axis=-1)
        return _l2(self.head(fused, training=training))

    def get_config(self) -> dict:
        encoder = tf.keras.layers.serialize(self.text_encoder) if self.text_encoder is not None else None
        return {**super().get_config(), "item_ids": self.item_ids, "id_embedding_dim": self.id_embedding_dim,
                "text_encoder": encoder, "categorical_vocabularies": self.categorical_vocabularies,
                "categorical_embedding_dim": self.categorical_embedding_dim, "hidden_units": self.hidden_units,
                "embedding_dim": self.embedding_dim, "dropout": self.dropout}

    @classmethod
    def from_config(cls, config: dict) -> "ItemTower":
        encoder = config.get("text_encoder")
        config = dict(config, text_encoder=tf.keras.layers.deserialize(encoder) if encoder else None)
        return cls(**config)


for _cls in (QueryTower, ItemTower):
    tf.keras.utils.register_keras_serializable("tfrec")(_cls)
