"""Feature arrays and ``tf.data`` pipelines for the towers.

Frozen encoders are run once per distinct text (:class:`TextCache`); the
pipeline then carries ``query_text_encoding`` / ``item_text_encoding`` float
vectors instead of strings, and the towers skip BERT.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfrec.data.dataset import Catalog, Examples

log = logging.getLogger("tfrec")


class TextCache:
    """Encoder outputs for a set of distinct texts.

    Args:
      texts: texts to encode (duplicates are encoded once).
      encode: list[str] -> float32 [n, hidden] (e.g. ``BertTextEncoder.encode_texts``).
    """

    def __init__(self, texts: list[str], encode, progress: str | None = None):
        self.texts = list(dict.fromkeys(texts))
        self.row = {t: i for i, t in enumerate(self.texts)}
        self.matrix = encode(self.texts, progress=progress) if progress else encode(self.texts)

    def lookup(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), hidden]; every text must be in the cache."""
        return self.matrix[[self.row[t] for t in texts]]


def item_features(catalog: Catalog, positions: np.ndarray, item_cache: TextCache | None = None) -> dict:
    """Item-tower inputs for the catalog rows ``positions`` (int [n])."""
    feats = {"item_id": np.array(catalog.item_ids, dtype=object)[positions]}
    texts = np.array(catalog.texts, dtype=object)[positions]
    if item_cache is not None:
        feats["item_text_encoding"] = item_cache.lookup(list(texts))
    else:
        feats["item_text"] = texts
    for col, values in catalog.categorical.items():
        feats[f"item_{col}"] = np.array(values, dtype=object)[positions]
    return feats


def query_features(texts: list[str], query_cache: TextCache | None = None) -> dict:
    """Query-tower inputs for ``texts``."""
    if query_cache is not None:
        return {"query_text_encoding": query_cache.lookup(texts)}
    return {"query_text": np.array(texts, dtype=object)}


def history_features(examples: Examples) -> dict:
    """``history_item_ids``: int64 [n, length] catalog rows, most recent first, -1 padded (none if no history),
    and ``history_labels`` float32 [n, length], the user's label of each (for the ranking head)."""
    if examples.history is None:
        return {}
    feats = {"history_item_ids": examples.history}
    if examples.history_label is not None:
        feats["history_labels"] = examples.history_label
    return feats


def query_inputs(examples: Examples, query_cache: TextCache | None, query_tower) -> dict:
    """What ``query_tower`` reads for ``examples``: the query text (or its cached encoding) and/or the history."""
    feats = {} if query_tower.encoder is None else query_features(examples.query_text, query_cache)
    feats.update({} if query_tower.history_encoder is None else history_features(examples))
    return feats


def training_features(examples: Examples, catalog: Catalog, item_probability: np.ndarray,
                      query_cache: TextCache | None = None, item_cache: TextCache | None = None,
                      query_text: bool = True) -> dict:
    """Everything one training example carries (arrays with a leading [n]).

    ``query_text=False`` leaves the query text out (a query tower that reads only the history).
    """
    positions = np.array([catalog.position[i] for i in examples.item_id], dtype=np.int64)
    feats = query_features(examples.query_text, query_cache) if query_text else {}
    feats.update(history_features(examples))
    feats.update(item_features(catalog, positions, item_cache))
    feats["item_position"] = positions  # int64 [n]: the catalog row, compared for accidental hits
    feats["item_probability"] = item_probability[positions]
    feats["label"] = examples.label
    if examples.weight is not None:
        feats["sample_weight"] = examples.weight  # float32 [n]: scales each example's loss
    return feats


def make_dataset(features: dict, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_remainder: bool = False, repeat: bool = False) -> tf.data.Dataset:
    """Batches feature arrays into a ``tf.data.Dataset`` of dicts.

    Shuffled, it shuffles row numbers and gathers each batch's rows: the same batches as shuffling the
    rows themselves (the order depends on the seed and sizes alone), without a buffer of copied rows,
    which at 10^6 rows of cached encodings took most of a minute to refill at every pass over the data.
    """
    tensors = {k: tf.constant(v.astype(str).tolist() if v.dtype == object else v) for k, v in features.items()}
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices(tensors)
        ds = ds.repeat() if repeat else ds
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    n = len(next(iter(features.values())))
    ds = tf.data.Dataset.range(n).shuffle(min(n, 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = (ds.repeat() if repeat else ds).batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda rows: {k: tf.gather(v, rows) for k, v in tensors.items()}).prefetch(tf.data.AUTOTUNE)
