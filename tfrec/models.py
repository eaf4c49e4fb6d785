"""The two-tower model: wiring only (towers -> tasks -> weighted loss)."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec.config.resolve import choose_text_skip
from tfrec.encoders.history import make_history_encoder
from tfrec.encoders.text import BertTextEncoder
from tfrec.ranking import RankingHead, RankingTask
from tfrec.tasks import RetrievalTask
from tfrec.towers import ItemTower, QueryTower


class TwoTowerModel(tfrs.Model):
    """``loss = retrieval_weight * retrieval_loss (+ ranking_weight * ranking_loss)``.

    A ``sample_weight`` feature (float32 [batch], ``data.interactions.sample_weight_column``) scales each
    example's loss in both tasks.

    A task whose weight is 0 is not computed at all (no loss, no metrics, no
    gradient), so either task can be switched off.

    Training uses two optimizers: ``optimizer`` (from ``compile``) for the heads
    and embeddings, ``encoder_optimizer`` (lower learning rate) for the BERT
    layers that train. Set ``encoder_optimizer`` to None when encoders are frozen.

    Args:
      query_tower: features -> float32 [batch, dim].
      item_tower: features -> float32 [batch, dim].
      retrieval: the retrieval task.
      retrieval_weight: its weight in the total loss.
      ranking_head: :class:`tfrec.ranking.RankingHead` over the towers' outputs, or None.
      ranking: :class:`tfrec.ranking.RankingTask` (with ``ranking_head``), or None.
      ranking_weight: its weight in the total loss.
    """

    def __init__(self, query_tower: QueryTower, item_tower: ItemTower, retrieval: RetrievalTask,
                 retrieval_weight: float = 1.0, ranking_head=None, ranking=None, ranking_weight: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.query_tower, self.item_tower = query_tower, item_tower
        self.retrieval, self.retrieval_weight = retrieval, retrieval_weight
        self.ranking_head, self.ranking, self.ranking_weight = ranking_head, ranking, ranking_weight
        self.encoder_optimizer: tf.keras.optimizers.Optimizer | None = None
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        negatives = self.retrieval.negatives
        extra = extra_ids = None
        if negatives == "full":  # the whole catalog is embedded once: candidates, positives and history items
            extra = self.item_tower.embed_rows(tf.range(len(self.item_tower.item_ids), dtype=tf.int64), training)
            item_embeddings = tf.gather(extra, features["item_position"])
            query_embeddings = self.query_tower(features, training=training, catalog_embeddings=extra)
        else:
            query_embeddings = self.query_tower(features, training=training)
            item_embeddings = self.item_tower(features, training=training)
            if negatives in ("sampled", "mixed"):
                extra_ids = self.retrieval.sample()
                extra = self.item_tower.embed_rows(extra_ids, training)
        loss = tf.constant(0.0)
        # Python-level checks: a task with weight 0 is left out of the graph.
        if self.retrieval_weight > 0:
            # Accidental hits are found by comparing ids: catalog positions (int64) when the pipeline has
            # them are compared much faster than the string ids.
            ids = features["item_position"] if "item_position" in features else features["item_id"]
            loss += self.retrieval_weight * self.retrieval(
                query_embeddings, item_embeddings, ids, features.get("item_probability"),
                sample_weight=features.get("sample_weight"), extra_embeddings=extra, extra_ids=extra_ids)
        if self.ranking is not None and self.ranking_weight > 0:
            history = self.ranking_history(features, training, extra if negatives == "full" else None)
            scores = self.ranking_head(query_embeddings, item_embeddings, features, training=training,
                                       history=history)
            loss += self.ranking_weight * self.ranking(features["label"], scores,
                                                       sample_weight=features.get("sample_weight"))
        return loss

    def ranking_history(self, features: dict, training: bool = False,
                        catalog_embeddings: tf.Tensor | None = None) -> dict | None:
        """The ranking head's ``history`` input (its ``rated_history``), or None when it reads none.

        ``history_item_ids`` [batch, L] through the item tower (or gathered from
        ``catalog_embeddings`` [num_items, d]) with ``history_labels`` float32 [batch, L]
        (absent: unknown, NaN).
        """
        if self.ranking_head is None or self.ranking_head.rated_history is None or \
                "history_item_ids" not in features:
            return None
        rows = self.item_tower.rows_of(features["history_item_ids"])
        if catalog_embeddings is not None:
            items = tf.gather(catalog_embeddings, tf.maximum(rows, 0))
        else:
            items = self.item_tower.embed_rows(rows, training=training)
        labels = features.get("history_labels")
        if labels is None:
            labels = tf.fill(tf.shape(rows), float("nan"))
        return {"items": items, "labels": labels, "mask": rows >= 0}

    def set_catalog(self, catalog_features: dict) -> None:
        """Gives the item tower the whole catalog's inputs when items are embedded by row (history items,
        sampled or full negatives); see :meth:`tfrec.towers.ItemTower.set_catalog`."""
        if self.query_tower.history_encoder is not None or self.retrieval.negatives != "in_batch":
            with self.distribute_strategy.scope():
                self.item_tower.set_catalog(catalog_features)

    def _encoder_variable_ids(self) -> set[int]:
        encoders = {id(e): e for e in (self.query_tower.encoder, self.item_tower.text_encoder) if e is not None}
        return {id(v) for e in encoders.values() for v in e.trainable_variables}

    def train_step(self, features: dict) -> dict:
        scaled = [o for o in (self.optimizer, self.encoder_optimizer)
                  if isinstance(o, tf.keras.mixed_precision.LossScaleOptimizer)]
        with tf.GradientTape(persistent=bool(scaled)) as tape:
            loss = self.compute_loss(features, training=True)
            total = loss + tf.add_n([tf.reduce_sum(x) for x in self.losses]) if self.losses else loss
        variables = self.trainable_variables
        encoder_ids = self._encoder_variable_ids() if self.encoder_optimizer is not None else set()
        if scaled:
            gradients = self._scaled_gradients(tape, total, variables, encoder_ids)
        else:
            gradients = tape.gradient(total, variables)
        head = [(g, v) for g, v in zip(gradients, variables) if id(v) not in encoder_ids and g is not None]
        encoder = [(g, v) for g, v in zip(gradients, variables) if id(v) in encoder_ids and g is not None]
        self.optimizer.apply_gradients(head)
        if encoder:
            self.encoder_optimizer.apply_gradients(encoder)
        return self._metrics_dict(loss)

    def _scaled_gradients(self, tape, total, variables, encoder_ids) -> list:
        """mixed_float16: each LossScaleOptimizer scales the loss for its own variables and unscales
        their gradients (the backward pass seeded with its loss scale), so each adapts its own scale."""
        gradients = [None] * len(variables)
        for opt, is_encoder in ((self.optimizer, False), (self.encoder_optimizer, True)):
            idx = [i for i, v in enumerate(variables) if (id(v) in encoder_ids) == is_encoder]
            if opt is None or not idx:
                continue
            if isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer):
                grads = tape.gradient(total, [variables[i] for i in idx],
                                      output_gradients=tf.cast(opt.loss_scale, total.dtype))
                grads = opt.get_unscaled_gradients(grads)
            else:
                grads = tape.gradient(total, [variables[i] for i in idx])
            for i, g in zip(idx, grads):
                gradients[i] = g
        return gradients

    def test_step(self, features: dict) -> dict:
        return self._metrics_dict(self.compute_loss(features, training=False))

    def _metrics_dict(self, loss: tf.Tensor) -> dict:
        # The loss is averaged over the global batch, so each replica holds its share.
        self.loss_tracker.update_state(loss * tf.distribute.get_strategy().num_replicas_in_sync)
        return {m.name: m.result() for m in self.metrics}


def build_model(cfg, catalog, item_probability=None, ids_only: bool = False, trained_items=None) -> TwoTowerModel:
    """Builds towers and tasks from a :class:`tfrec.config.Config` and the catalog.

    With ``data.interactions.query_history_items`` the query tower reads the
    user's history as items (``model.history_encoder``) and has no text path
    unless the data also has a ``query_column``. The item tower's catalog table
    (:meth:`ItemTower.set_catalog`) is left to the caller, who may hold cached
    text encodings.

    Args:
      cfg: the resolved config.
      catalog: :class:`tfrec.data.dataset.Catalog` (id and categorical vocabularies).
      item_probability: float32 [num_items] training frequencies (sampled/mixed negatives need them).
      ids_only: no text and no categorical features anywhere (the ``id_sequence`` baseline).
      trained_items: bool [num_items], items with training interactions; the others are never negatives
        (sampled, mixed, full): like a new item, nothing about them is known at training time.
    """
    m = cfg.model
    q = m.query_encoder
    ic = cfg.data.interactions
    history_length = ic.query_history_items or 0
    encoder_name = m.history_encoder
    if ids_only and encoder_name == "text":  # an ID-only model cannot read titles: the plain mean of the items
        encoder_name = "mean"
    history_encoder = make_history_encoder(encoder_name, history_length, m.embedding_dim, m.dropout) \
        if history_length and encoder_name != "text" else None
    wants_query_text = ic.query_column is not None or history_encoder is None
    query_encoder = item_encoder = None
    if not ids_only:
        if wants_query_text or m.item_text_encoder in ("shared", "separate"):
            query_encoder = BertTextEncoder(q.checkpoint, q.max_length, q.pooling, q.trainable_layers,
                                            seed=cfg.train.seed, lora_rank=q.lora_rank,
                                            train_embeddings=q.train_embeddings, name="query_encoder")
        if m.item_text_encoder == "shared":
            item_encoder = query_encoder
        elif m.item_text_encoder == "separate":
            item_encoder = BertTextEncoder(q.checkpoint, q.max_length, q.pooling, q.trainable_layers,
                                           seed=cfg.train.seed + 1, lora_rank=q.lora_rank,
                                           train_embeddings=q.train_embeddings, name="item_encoder")
    vocabularies = {} if ids_only else {c: sorted(set(v)) for c, v in catalog.categorical.items()}
    # Text in both towers: the text skip (tfrec.text_skip) starts them as the encoder's cosine.
    skip = (m.text_skip if m.text_skip != "auto" else choose_text_skip(cfg)[0]) == "on" and wants_query_text \
        and query_encoder is not None and item_encoder is not None
    query_tower = QueryTower(query_encoder if wants_query_text else None, m.hidden_units, m.embedding_dim,
                             m.dropout, history_encoder, history_length, text_skip=skip, name="query_tower")
    id_dim = m.item_id_embedding_dim or (m.embedding_dim if ids_only else 0)
    item_tower = ItemTower(catalog.item_ids, id_dim, item_encoder, vocabularies, m.categorical_embedding_dim,
                           m.hidden_units, m.embedding_dim, m.dropout, text_skip=skip, name="item_tower")
    query_tower.attach_item_tower(item_tower)
    r = cfg.retrieval
    retrieval = RetrievalTask(r.temperature, r.logq_correction, r.remove_accidental_hits, r.num_hard_negatives,
                              batch_metric_ks=(10,), cross_replica_negatives=r.cross_replica_negatives,
                              negatives=r.negatives, num_sampled=r.num_sampled, sampling=r.sampling,
                              name="retrieval")
    if retrieval.negatives != "in_batch":
        if item_probability is None:
            raise ValueError(f"retrieval.negatives={retrieval.negatives} needs the catalog's item probabilities")
        retrieval.set_catalog_probability(item_probability, trained_items)
    rk = cfg.ranking
    ranking_head = ranking = None
    if rk.weight > 0 and not ids_only:
        ranking_head = RankingHead(
            rk.head, rk.hidden_units, rk.objective, rk.cross_layers, rk.projection_dim,
            vocabularies if "categorical" in rk.extra_features else None, m.categorical_embedding_dim,
            "retrieval_score" in rk.extra_features,
            history_length if "rated_history" in rk.extra_features else 0, name="ranking_head")
        ranking_head.build_variables(m.embedding_dim)
        ranking = RankingTask(rk.objective, rk.positive_threshold, name="ranking")
    return TwoTowerModel(query_tower, item_tower, retrieval, r.weight, ranking_head, ranking,
                         rk.weight if ranking is not None else 0.0)
