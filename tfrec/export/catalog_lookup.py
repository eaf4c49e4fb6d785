"""Ranking inside a SavedModel: item id -> embedding lookup, candidate scoring and re-ordering.

The export's ``rank`` and ``retrieve_and_rank`` signatures call these; the
head itself is :class:`tfrec.ranking.RankingHead`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec.ranking import RankingHead


class CatalogLookup(tf.Module):
    """Item id -> the item's embedding and categorical values, inside a SavedModel.

    The ranking head needs the item tower's output for ids a caller names; the
    catalog's embeddings are computed once at export and looked up by id here.

    Args:
      item_ids: [num_items] unique ids.
      item_embeddings: float32 [num_items, d] from the trained item tower.
      categorical: column -> [num_items] values (the head's categorical inputs).
    """

    def __init__(self, item_ids: list[str], item_embeddings: np.ndarray, categorical: dict[str, list[str]],
                 name: str = "catalog_lookup"):
        super().__init__(name=name)
        ids = tf.constant([str(i) for i in item_ids], tf.string)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(ids, tf.range(len(item_ids), dtype=tf.int64)), default_value=-1)
        # Variables, not constants: they go to the variables/ checkpoint, not the graph proto.
        self.embeddings = tf.Variable(np.asarray(item_embeddings, np.float32), trainable=False, name="embeddings")
        self.columns = list(categorical)
        self.values = [tf.Variable(np.array([str(v) for v in categorical[c]], dtype=object), dtype=tf.string,
                                   trainable=False, name=f"item_{c}") for c in self.columns]

    def lookup(self, item_ids: tf.Tensor) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """string [n] -> (float32 [n, d] embeddings, {item_<col>: string [n]}, bool [n] known)."""
        rows = self.table.lookup(item_ids)
        known = rows >= 0
        safe = tf.where(known, rows, tf.zeros_like(rows))
        features = {f"item_{c}": tf.gather(v, safe) for c, v in zip(self.columns, self.values)}
        return tf.gather(self.embeddings, safe), features, known


def rank_candidates(head: RankingHead, catalog: CatalogLookup, query_embeddings: tf.Tensor,
                    item_ids: tf.Tensor, history: dict | None = None) -> tf.Tensor:
    """Ranking scores float32 [batch, c] of ``item_ids`` string [batch, c] for each query [batch, d].

    ``history``: the head's per-query ``history`` (``items`` [batch, L, d], ``labels`` and ``mask``
    [batch, L]), repeated for each candidate. Ids not in the catalog (and ``""`` padding) score
    ``-inf``, so they sort last.
    """
    shape = tf.shape(item_ids)
    flat = tf.reshape(item_ids, [-1])
    items, features, known = catalog.lookup(flat)
    queries = tf.repeat(tf.cast(query_embeddings, tf.float32), shape[1], axis=0)  # [batch * c, d]
    if history is not None:
        history = {key: tf.repeat(value, shape[1], axis=0) for key, value in history.items()}
    scores = head.score(queries, items, features, history)
    scores = tf.where(known, scores, tf.fill(tf.shape(scores), float("-inf")))
    return tf.reshape(scores, shape)


def rerank(ranking_scores: tf.Tensor, *others: tf.Tensor) -> list[tf.Tensor]:
    """Sorts each row by ``ranking_scores`` [batch, c] (best first); applies the same order to ``others``."""
    order = tf.argsort(ranking_scores, axis=-1, direction="DESCENDING", stable=True)
    return [tf.gather(t, order, batch_dims=1) for t in (ranking_scores, *others)]
