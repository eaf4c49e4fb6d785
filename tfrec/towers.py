"""The two towers. Each maps a dict of features to L2-normalised embeddings.

Feature names (all tensors have a leading batch dimension):

* ``query_text``: string [batch], or ``query_text_encoding``: float32
  [batch, hidden] when the frozen encoder's output was cached.
* ``history_item_ids``: the user's recent items, most recent first, padded:
  int64 [batch, length] catalog rows (-1 = padding) or string [batch, length]
  item ids ("" or an unknown id = padding). Each is embedded by the item tower
  itself (from its catalog table, :meth:`ItemTower.set_catalog`), then pooled by
  a history encoder (:mod:`tfrec.encoders.history`).
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

import numpy as np
import tensorflow as tf

from tfrec.encoders.ids import IdEmbedding
from tfrec.encoders.text import BertTextEncoder
from tfrec.text_skip import TextSkip


def _mlp(hidden_units: list[int], embedding_dim: int, dropout: float, name: str) -> tf.keras.Sequential:
    layers = []
    for units in hidden_units:
        layers.append(tf.keras.layers.Dense(units, activation="gelu"))
        if dropout:
            layers.append(tf.keras.layers.Dropout(dropout))
    layers.append(tf.keras.layers.Dense(embedding_dim))
    return tf.keras.Sequential(layers, name=name)


def _with_skip(skip: TextSkip | None, head: tf.Tensor, text: tf.Tensor | None) -> tf.Tensor:
    """The head's output [batch, dim] plus the text skip's (:mod:`tfrec.text_skip`), unit length."""
    if skip is None or text is None:
        return _l2(head)
    return _l2(skip(text, head))


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
    """Query text and/or history items -> float32 [batch, embedding_dim], unit length.

    The text path (BERT) and the history path (item tower embeddings of the
    history items, pooled by ``history_encoder``) are concatenated before the
    head; a path whose feature a request leaves out contributes zeros, so text
    only, history only and both all work with one set of weights.

    Args:
      encoder: the BERT text encoder (may be shared with the item tower), or None (no text path).
      hidden_units: widths of the projection MLP's hidden layers.
      embedding_dim: output width.
      dropout: dropout after each hidden layer.
      history_encoder: a :mod:`tfrec.encoders.history` layer, or None (no history path).
      history_length: the padded history length (``data.interactions.query_history_items``).
      text_skip: the encoder's output through a :class:`tfrec.text_skip.TextSkip`, the head gated
        from zero (needs ``encoder``).
    """

    def __init__(self, encoder: BertTextEncoder | None, hidden_units: list[int], embedding_dim: int,
                 dropout: float = 0.0, history_encoder: tf.keras.layers.Layer | None = None, history_length: int = 0,
                 text_skip: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.history_encoder, self.history_length = encoder, history_encoder, history_length
        self.hidden_units, self.embedding_dim, self.dropout = list(hidden_units), embedding_dim, dropout
        self.text_skip = bool(text_skip and encoder is not None)
        self.head = _mlp(self.hidden_units, embedding_dim, dropout, "query_head")
        self.skip = TextSkip(encoder.hidden_size, embedding_dim, name="query_text_skip") if self.text_skip else None
        # The item tower embeds history items; a one-element list so that it is set after construction (the
        # model owns it; Keras de-duplicates its weights when they are reached through both towers).
        self._item_tower_ref: list = []

    def attach_item_tower(self, item_tower: "ItemTower") -> None:
        """The tower that embeds history items (its catalog table must be set)."""
        self._item_tower_ref[:] = [item_tower]

    def history_vector(self, history: tf.Tensor, training: bool = False,
                       catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """``history_item_ids`` [batch, length] (int rows or string ids) -> float32 [batch, dim].

        ``catalog_embeddings`` float32 [num_items, dim], when the caller already has the item
        tower's output for every row (full-catalog negatives), is gathered instead of re-embedding.
        """
        item_tower = self._item_tower_ref[0]
        rows = item_tower.rows_of(history)
        mask = rows >= 0
        if catalog_embeddings is not None:
            items = tf.gather(catalog_embeddings, tf.maximum(rows, 0))
        else:
            items = item_tower.embed_rows(rows, training=training)  # [batch, length, dim]; padding is masked
        return self.history_encoder(items, mask, training=training)

    def call(self, features: dict, training: bool = False, catalog_embeddings: tf.Tensor | None = None
             ) -> tf.Tensor:
        parts = []
        batch = text = None
        if self.encoder is not None:
            if any(k in features for k in ("query_text", "query_text_encoding", "query_input_ids")):
                text = tf.cast(_encode(self.encoder, features, "query_text", training), tf.float32)
                if self.history_encoder is not None and "query_text" in features:  # "" = no text, not a text
                    text *= tf.cast(tf.reshape(features["query_text"], [-1]) != "", tf.float32)[:, None]
                batch = tf.shape(text)[0]
            parts.append(text)
        if self.history_encoder is not None:
            history = features.get("history_item_ids")
            hist = None if history is None else tf.cast(
                self.history_vector(history, training, catalog_embeddings), tf.float32)
            if hist is not None:
                batch = tf.shape(hist)[0]
            parts.append(hist)
        if batch is None:
            raise ValueError("the query tower needs query_text or history_item_ids")
        widths = self._part_widths()
        parts = [p if p is not None else tf.zeros([batch, w]) for p, w in zip(parts, widths)]
        return _with_skip(self.skip, self.head(tf.concat(parts, -1), training=training), text)

    def _part_widths(self) -> list[int]:
        widths = []
        if self.encoder is not None:
            widths.append(self.encoder.hidden_size)
        if self.history_encoder is not None:
            widths.append(self._item_tower_ref[0].embedding_dim)
        return widths

    def project(self, encodings: tf.Tensor) -> tf.Tensor:
        """float32 [batch, hidden] text encoder outputs -> [batch, embedding_dim] (text-only towers)."""
        return _with_skip(self.skip, self.head(encodings), encodings)

    def get_config(self) -> dict:
        encoder = tf.keras.layers.serialize(self.encoder) if self.encoder is not None else None
        history = tf.keras.layers.serialize(self.history_encoder) if self.history_encoder is not None else None
        return {**super().get_config(), "encoder": encoder, "hidden_units": self.hidden_units,
                "embedding_dim": self.embedding_dim, "dropout": self.dropout, "history_encoder": history,
                "history_length": self.history_length, "text_skip": self.text_skip}

    @classmethod
    def from_config(cls, config: dict) -> "QueryTower":
        config = dict(config)
        for key in ("encoder", "history_encoder"):
            config[key] = tf.keras.layers.deserialize(config[key]) if config.get(key) else None
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
      text_skip: the text encoder's output through a :class:`tfrec.text_skip.TextSkip`, the head (and
        with it the ids and categories) gated from zero (needs ``text_encoder``).
    """

    def __init__(self, item_ids: list[str], id_embedding_dim: int, text_encoder: BertTextEncoder | None,
                 categorical_vocabularies: dict[str, list[str]], categorical_embedding_dim: int,
                 hidden_units: list[int], embedding_dim: int, dropout: float = 0.0, text_skip: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.item_ids, self.id_embedding_dim = list(item_ids), id_embedding_dim
        self.text_encoder = text_encoder
        self.categorical_vocabularies = {k: list(v) for k, v in categorical_vocabularies.items()}
        self.categorical_embedding_dim = categorical_embedding_dim
        self.hidden_units, self.embedding_dim, self.dropout = list(hidden_units), embedding_dim, dropout
        self.id_embedding = IdEmbedding(self.item_ids, id_embedding_dim, name="item_id") if id_embedding_dim else None
        self.categorical = {col: IdEmbedding(vocab, categorical_embedding_dim, name=f"item_{col}")
                            for col, vocab in self.categorical_vocabularies.items()}
        self.text_skip = bool(text_skip and text_encoder is not None)
        self.head = _mlp(self.hidden_units, embedding_dim, dropout, "item_head")
        self.skip = TextSkip(text_encoder.hidden_size, embedding_dim, name="item_text_skip") if self.text_skip \
            else None
        self.row_lookup = tf.keras.layers.StringLookup(vocabulary=self.item_ids, num_oov_indices=1, mask_token=None)
        self.catalog_table: dict = {}

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        parts = []
        text = None
        if self.id_embedding is not None:
            parts.append(_embed_ids(self.id_embedding, features["item_id"]))
        if self.text_encoder is not None:
            text = _encode(self.text_encoder, features, "item_text", training)
            parts.append(text)
        for col, layer in self.categorical.items():
            parts.append(_embed_ids(layer, features[f"item_{col}"]))
        fused = tf.concat([tf.cast(p, tf.float32) for p in parts], axis=-1)
        return _with_skip(self.skip, self.head(fused, training=training), text)

    def set_catalog(self, catalog_features: dict) -> None:
        """Keeps the whole catalog's inputs in the tower so items can be embedded by row (history, negatives).

        Args:
          catalog_features: item-tower inputs of every catalog row in order (e.g.
            :func:`tfrec.data.pipeline.item_features` over all rows): ``item_text_encoding``
            float32 [num_items, hidden] (or ``item_text`` string [num_items]) and ``item_<column>`` strings.
        """
        table = {}
        n = len(self.item_ids)
        for key, values in catalog_features.items():
            if key == "item_id":
                continue
            values = np.asarray(values)
            if values.dtype == object:
                values = values.astype(str)
            if key.startswith("item_") and key[len("item_"):] in self.categorical:
                values = self.categorical[key[len("item_"):]].lookup(tf.constant(values)).numpy()
            table[key] = tf.Variable(values, trainable=False, name=f"catalog_{key}")
            if len(values) != n:
                raise ValueError(f"catalog feature {key} has {len(values)} rows, the tower has {n} items")
        self.catalog_table = table

    def rows_of(self, ids: tf.Tensor) -> tf.Tensor:
        """Item ids (strings; "" or unknown -> -1) or int rows (kept) -> int64 catalog rows, same shape."""
        if ids.dtype.is_integer:
            return tf.cast(ids, tf.int64)
        # StringLookup index 0 is the OOV bucket, index i + 1 is catalog row i.
        return self.row_lookup(ids) - 1

    def embed_rows(self, rows: tf.Tensor, training: bool = False) -> tf.Tensor:
        """int64 catalog rows, any shape [...] (-1 allowed, gives an arbitrary vector) -> float32 [..., dim].

        Each distinct row is embedded once per call (a batch of histories repeats items a lot).
        """
        flat = tf.maximum(tf.reshape(rows, [-1]), 0)
        unique, index = tf.unique(flat)
        feats = {"item_id": unique + 1}  # lookup index of row r is r + 1
        for key, table in self.catalog_table.items():
            feats[key] = tf.gather(table, unique)
        out = tf.gather(self(feats, training=training), index)
        return tf.reshape(out, tf.concat([tf.shape(rows), [self.embedding_dim]], 0))

    def get_config(self) -> dict:
        encoder = tf.keras.layers.serialize(self.text_encoder) if self.text_encoder is not None else None
        return {**super().get_config(), "item_ids": self.item_ids, "id_embedding_dim": self.id_embedding_dim,
                "text_encoder": encoder, "categorical_vocabularies": self.categorical_vocabularies,
                "categorical_embedding_dim": self.categorical_embedding_dim, "hidden_units": self.hidden_units,
                "embedding_dim": self.embedding_dim, "dropout": self.dropout, "text_skip": self.text_skip}

    @classmethod
    def from_config(cls, config: dict) -> "ItemTower":
        encoder = config.get("text_encoder")
        config = dict(config, text_encoder=tf.keras.layers.deserialize(encoder) if encoder else None)
        return cls(**config)


for _cls in (QueryTower, ItemTower):
    tf.keras.utils.register_keras_serializable("tfrec")(_cls)
