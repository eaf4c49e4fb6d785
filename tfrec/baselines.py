"""Learned baselines, trained as carefully as the model on the same split.

``id_sequence``: an ID-only model over the same history window, as a user would
build it in an afternoon: the query is the user's last
``data.interactions.query_history_items`` items (id embeddings only, no text,
no categorical features) pooled by the same ``model.history_encoder``; items are
id embeddings. It trains with the model's negatives, temperature, optimiser,
epochs and early stopping (best validation ``train.early_stopping_metric``,
``train.early_stopping_patience``), so the gap to the model is what item text,
categorical features and the shared item tower add.

``bm25`` (:mod:`tfrec.lexical`, no training) ranks the catalog by BM25 of the
query text against the item texts, popularity breaking ties; it is what a
search team would run before any model. ``content`` (no training) searches
with the model's text encoder as it comes: a pretrained sentence encoder's
query against item similarity. ``popularity`` is in
:mod:`tfrec.evaluate` (no training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import tensorflow as tf

from tfrec import early_stopping, evaluate, runtime, training
from tfrec.data import pipeline
from tfrec.data.dataset import RetrievalData
from tfrec.encoders.text import BertTextEncoder
from tfrec.lexical import BM25
from tfrec.models import build_model
from tfrec.progress import TrainingProgress

log = logging.getLogger("tfrec")
ID_FEATURES = ("history_item_ids", "item_id", "item_position", "item_probability")


def id_sequence_embeddings(cfg, data: RetrievalData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Trains the ``id_sequence`` model; returns (queries of ``split`` [n, dim], catalog [num_items, dim]).

    Args:
      cfg: the resolved config (the model's history window, encoder, negatives and training settings).
      data: the split data; its examples must carry ``history`` (history-built queries).
      split: "validation" or "test", the queries to embed with the best epoch's weights.
    """
    if data.train.history is None:
        raise ValueError("the id_sequence baseline needs history-built queries (data.interactions."
                         "query_history_items)")
    t = cfg.train
    probability = data.item_probability()
    with runtime.layer_seed(t.seed):  # the initial weights from the run's seed alone; no global seed is set
        model = build_model(cfg, data.catalog, probability, ids_only=True, trained_items=data.item_counts() > 0)
        model.item_tower.set_catalog({"item_id": np.array(data.catalog.item_ids, object)})
        model.query_tower({"history_item_ids": tf.constant(data.train.history[:1])})  # the weights are made here
        model.item_tower.embed_rows(tf.range(1, dtype=tf.int64))
    features = pipeline.training_features(data.train, data.catalog, probability, query_text=False)
    features = {k: v for k, v in features.items() if k in ID_FEATURES}
    batch = t.batch_size
    steps = math.ceil(len(data.train) / batch)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    training.compile_model(model, cfg, steps * t.epochs)
    train = pipeline.make_dataset(features, batch, shuffle=True, seed=t.seed,
                                  drop_remainder=len(data.train) >= 2 * batch, repeat=True)
    rows = tf.range(len(data.catalog), dtype=tf.int64)
    embed_items = tf.function(lambda: model.item_tower.embed_rows(rows))
    embed_queries = tf.function(lambda h: model.query_tower({"history_item_ids": h}))

    def embeddings(name: str) -> tuple[np.ndarray, np.ndarray]:
        history = getattr(data, name).history
        queries = np.concatenate([embed_queries(tf.constant(history[i:i + 1024])).numpy()
                                  for i in range(0, len(history), 1024)])
        return queries, embed_items().numpy()

    metric, k = t.early_stopping_metric, int(t.early_stopping_metric.split("@")[1])
    keeper = _KeepBest(lambda: evaluate.evaluate_embeddings(*embeddings("validation"), data, "validation", [k],
                                                            cfg.eval.exclude_seen)[metric],
                       metric, t.early_stopping_patience, t.epochs)
    lines = TrainingProgress(steps, t.epochs, batch, label="id_sequence", estimate=False)  # lines every 30 s
    model.fit(train, epochs=t.epochs, steps_per_epoch=steps, callbacks=[keeper, lines], verbose=0)
    best = keeper.best_weights
    model.set_weights(best)
    return embeddings(split)


def id_sequence_baseline(cfg, data: RetrievalData, split: str, ks: list[int], exclude_seen: bool = False) -> dict:
    """Metrics of the trained ``id_sequence`` model on ``split`` (same metrics as the model's)."""
    q, items = id_sequence_embeddings(cfg, data, split)
    return evaluate.evaluate_embeddings(q, items, data, split, ks, exclude_seen)


def bm25_baseline(data: RetrievalData, split: str, ks: list[int], exclude_seen: bool = False) -> dict:
    """Metrics of BM25 over the item texts for ``split``'s query texts (same metrics as the model's)."""
    targets, exclude = evaluate._targets_and_exclusions(data, split, exclude_seen)
    ranks = BM25(data.catalog.texts).ranks(getattr(data, split).query_text, targets,
                                           evaluate.popularity_order(data.item_counts()), exclude)
    return evaluate.metrics_from_ranks(ranks, ks)


class _KeepBest(tf.keras.callbacks.Callback):
    """Validation after each epoch; keeps the best weights; stops by the model's rule (:mod:`tfrec.early_stopping`)."""

    def __init__(self, validate, metric: str, patience: int, epochs: int):
        super().__init__()
        self.validate, self.metric, self.epochs = validate, metric, epochs
        self.rule, self.best_weights, self.started = early_stopping.EarlyStopping(patience), None, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        value = self.validate()
        log.info("id_sequence: epoch %d/%d val_%s=%.4f (%.0fs)", epoch + 1, self.epochs, self.metric, value,
                 time.time() - self.started)
        decision = self.rule.update(epoch, value)
        if decision == early_stopping.IMPROVED:
            self.best_weights = self.model.get_weights()
        self.model.stop_training = decision == early_stopping.STOP


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """[n, d] rows scaled to unit length (all-zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def content_embeddings(data: RetrievalData, split: str, item_text_encodings: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The ``content`` baseline: no training, the text encoder as it comes.

    A query is the mean of its history items' text embeddings; an item is its
    own text embedding (both unit length), so it ranks items by how much their
    text resembles what the user just had.

    Args:
      data: the split data (examples with ``history``).
      split: whose queries to embed.
      item_text_encodings: float32 [num_items, hidden], the frozen encoder's output per catalog row.
    Returns:
      (queries [n, hidden], items [num_items, hidden]).
    """
    items = _unit_rows(item_text_encodings)
    history = getattr(data, split).history
    mask = (history >= 0)[..., None]
    queries = (items[np.maximum(history, 0)] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    return queries.astype(np.float32), items.astype(np.float32)


def content_baseline(cfg, data: RetrievalData, split: str, ks: list[int], exclude_seen: bool = False,
                     encoder=None, query_cache: pipeline.TextCache | None = None,
                     item_cache: pipeline.TextCache | None = None) -> dict:
    """Metrics of the ``content`` baseline on ``split``: search with the text encoder as it comes, untrained.

    The run's ``model.query_encoder`` checkpoint, untrained (a pretrained
    sentence encoder such as the packaged MiniLM, as a user would try it
    before training anything; ``random://tiny`` gives a freshly initialised
    random one), embeds each item's text and each query: its text when the
    data has query text, else its history items' text embeddings, averaged
    (:func:`content_embeddings`). Items are ranked by cosine similarity.

    Args:
      encoder: a :class:`tfrec.encoders.text.BertTextEncoder` to use instead (None: built from ``cfg``).
      query_cache, item_cache: the run's frozen encoder outputs (the untrained checkpoint's), read instead of
        encoding again; used only with ``model.item_text_encoder: shared`` (one encoder for both).
    """
    q, has_text = cfg.model.query_encoder, cfg.data.interactions.query_column is not None
    if cfg.model.item_text_encoder != "shared":
        query_cache = item_cache = None
    if encoder is None and (item_cache is None or (has_text and query_cache is None)):
        encoder = BertTextEncoder(q.checkpoint, q.max_length, q.pooling, 0, seed=cfg.train.seed,
                                  name="content_encoder")

    def encode(texts: list[str], cache: pipeline.TextCache | None) -> np.ndarray:
        return cache.lookup(texts) if cache is not None else encoder.encode_texts(texts)

    item_text_encodings = encode(data.catalog.texts, item_cache)
    if has_text:
        queries = _unit_rows(encode(getattr(data, split).query_text, query_cache))
        items = _unit_rows(item_text_encodings)
    else:
        queries, items = content_embeddings(data, split, item_text_encodings)
    return evaluate.evaluate_embeddings(queries, items, data, split, ks, exclude_seen)


def cold_items_section(cfg, data: RetrievalData, model_queries: np.ndarray, model_items: np.ndarray,
                       item_cache: pipeline.TextCache | None) -> dict:
    """``eval.json``'s ``cold_items``: the test rows whose target is a cold item, ranked in the full catalog.

    Args:
      cfg: the resolved config (``eval.ks``, ``eval.exclude_seen``).
      data: the data after :func:`tfrec.data.dataset.hold_out_cold_items` (``data.cold_items`` set).
      model_queries: float32 [num_test, dim] the model's test queries; model_items: [num_items, dim].
      item_cache: the frozen item text encoder's outputs, for the ``content`` baseline (None: left out).
    Returns:
      {"items": num_cold, "targets": rows, "model": metrics, "baselines": {"popularity", "content", "bm25"}}
      (``content`` with history-built queries, ``bm25`` with query text).
    """
    cold, ks, exclude_seen = data.cold_items, cfg.eval.ks, cfg.eval.exclude_seen
    item_text_encodings = item_cache.lookup(data.catalog.texts) if item_cache is not None else None

    targets = np.array([data.catalog.position[i] for i in data.test.item_id], np.int64)
    rows = np.flatnonzero(np.isin(targets, cold))
    section = {"items": int(len(cold)), "targets": int(len(rows))}
    if len(rows) == 0:
        return section
    sub = dataclasses.replace(data, test=data.test.take(rows))
    section["model"] = evaluate.evaluate_embeddings(model_queries[rows], model_items, sub, "test", ks, exclude_seen)
    section["baselines"] = {"popularity": evaluate.popularity_baseline(sub, "test", ks, exclude_seen)}
    if item_text_encodings is not None and data.test.history is not None:
        q, items = content_embeddings(sub, "test", item_text_encodings)
        section["baselines"]["content"] = evaluate.evaluate_embeddings(q, items, sub, "test", ks, exclude_seen)
    if cfg.data.interactions.query_column is not None:  # query text: the words of a cold item still match
        section["baselines"]["bm25"] = bm25_baseline(sub, "test", ks, exclude_seen)
    return section
