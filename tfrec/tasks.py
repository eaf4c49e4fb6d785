"""Tasks own the losses and metrics; the model only wires towers into them.

Retrieval negatives (``retrieval.negatives``), for a batch of B queries whose
positives are the batch's items:

* ``in_batch``: the other B-1 items of the batch (logQ: minus log p(item)).
* ``sampled``: ``num_sampled`` = S items drawn per step from the catalog
  (uniform or by popularity); logits minus log(S q(item)).
* ``mixed``: in-batch plus sampled (Yang et al., RecSys 2020); every candidate's
  logit minus log(B p(item) + S q(item)), its expected count in the union.
* ``full``: every catalog item, an exact softmax (no correction needed).

In every mode a candidate that is the query's own positive item, other than
the positive's own column, is masked (an accidental hit). Catalog items marked
as not candidates (:meth:`RetrievalTask.set_catalog_probability`, e.g. items
with no training interaction: at training time a new item does not exist yet)
are never drawn and never scored as full-softmax negatives.

In every mode ``sample_weight`` (``data.interactions.sample_weight_column``)
scales each query's cross-entropy before the mean over the global batch: the
loss is ``sum_i w_i * l_i / B``, so a weight of 0 removes an example's
contribution and the batch size still divides.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

NEGATIVES = ("in_batch", "sampled", "mixed", "full")
SAMPLING = ("uniform", "popularity")


class RetrievalTask(tf.keras.layers.Layer):
    """In-batch softmax retrieval on ``tfrs.tasks.Retrieval``.

    Each query's positive is its own item; the other items of the batch are its
    negatives. Logits are ``query . item / temperature``; with ``logq_correction``
    each item's log sampling probability is subtracted (popular items appear as
    negatives more often than uniform sampling would make them); with
    ``remove_accidental_hits`` an in-batch copy of a query's own positive item is
    not treated as a negative; ``num_hard_negatives`` keeps only the highest
    scoring negatives.

    With ``cross_replica_negatives`` and several replicas (``tf.distribute``),
    every replica all-gathers the item embeddings (and the ids and sampling
    probabilities those options need) of the whole global batch and scores its
    queries against all of them, so N replicas at batch B train exactly like one
    replica at batch N*B (the all-gather's gradient is summed back to the replica
    that produced each item).

    Args:
      temperature: logit temperature (> 0).
      logq_correction: subtract log(item probability) from logits.
      remove_accidental_hits: mask in-batch duplicates of the positive by id.
      num_hard_negatives: keep only this many negatives per query, or None.
      batch_metric_ks: cutoffs of the in-batch top-k accuracy metrics.
      cross_replica_negatives: negatives from every replica's batch (see above).
      negatives: one of :data:`NEGATIVES` (module docstring); modes other than
        ``in_batch`` need :meth:`set_catalog_probability` before training.
      num_sampled: S, the catalog draws per step (``sampled`` and ``mixed``).
      sampling: ``uniform`` or ``popularity`` (draw by training frequency).
    """

    def __init__(self, temperature: float = 0.05, logq_correction: bool = True, remove_accidental_hits: bool = True,
                 num_hard_negatives: int | None = None, batch_metric_ks: tuple[int, ...] = (10,),
                 cross_replica_negatives: bool = False, negatives: str = "in_batch", num_sampled: int = 0,
                 sampling: str = "uniform", **kwargs):
        # Logits, softmax and loss in float32 under any mixed-precision policy: a float32 layer does not
        # cast its inputs down, and the TFRS task inside is built under a float32 policy too.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.cross_replica_negatives = cross_replica_negatives
        self.temperature, self.logq_correction = temperature, logq_correction
        self.remove_accidental_hits, self.num_hard_negatives = remove_accidental_hits, num_hard_negatives
        self.batch_metric_ks = tuple(batch_metric_ks)
        if negatives not in NEGATIVES:
            raise ValueError(f"retrieval.negatives: unknown mode '{negatives}'; expected one of {', '.join(NEGATIVES)}")
        if sampling not in SAMPLING:
            raise ValueError(f"retrieval.sampling: unknown '{sampling}'; expected one of {', '.join(SAMPLING)}")
        if negatives in ("sampled", "mixed") and num_sampled < 1:
            raise ValueError(f"retrieval.num_sampled: must be >= 1 with negatives={negatives}, got {num_sampled}")
        self.negatives, self.num_sampled, self.sampling = negatives, num_sampled, sampling
        self.catalog_probability: tf.Variable | None = None
        policy = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy("float32")
        try:
            self.task = self._make_task(temperature, num_hard_negatives, remove_accidental_hits)
        finally:
            tf.keras.mixed_precision.set_global_policy(policy)

    def _make_task(self, temperature, num_hard_negatives, remove_accidental_hits) -> tfrs.tasks.Retrieval:
        return tfrs.tasks.Retrieval(
            # Per-example losses: the average is taken over the *global* batch
            # below, so N replicas at batch B equal one replica at batch N*B.
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            batch_metrics=[tf.keras.metrics.TopKCategoricalAccuracy(k, name=f"batch_recall@{k}")
                           for k in self.batch_metric_ks],
            temperature=temperature, num_hard_negatives=num_hard_negatives,
            remove_accidental_hits=remove_accidental_hits)

    def set_catalog_probability(self, probability: np.ndarray, candidates: np.ndarray | None = None) -> None:
        """Each catalog item's share of training interactions (p above) and which items may be negatives.

        Args:
          probability: float32 [num_items].
          candidates: bool [num_items], False for items that are never negatives (default: all are).
        """
        p = np.asarray(probability, np.float32)
        c = np.ones(len(p), np.float32) if candidates is None else np.asarray(candidates, np.float32)
        if self.catalog_probability is None:
            self.catalog_probability = tf.Variable(p, trainable=False, name="catalog_probability")
            self.catalog_candidates = tf.Variable(c, trainable=False, name="catalog_candidates")
        else:
            self.catalog_probability.assign(p)
            self.catalog_candidates.assign(c)

    def _sampling_probability(self) -> tf.Tensor:
        """float32 [num_items]: q, the distribution negatives are drawn from (zero outside the candidates)."""
        q = self.catalog_probability if self.sampling == "popularity" else tf.ones_like(self.catalog_probability)
        q = q * self.catalog_candidates
        return q / tf.reduce_sum(q)

    def sample(self) -> tf.Tensor:
        """int64 [num_sampled] catalog rows drawn (with replacement) from q; empty for in_batch/full."""
        if self.negatives not in ("sampled", "mixed"):
            return tf.zeros([0], tf.int64)
        q = self._sampling_probability()
        logits = tf.where(q > 0, tf.math.log(tf.maximum(q, 1e-30)), tf.fill(tf.shape(q), -1e9))[None]
        return tf.random.categorical(logits, self.num_sampled, dtype=tf.int64)[0]

    def call(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor, item_ids: tf.Tensor,
             item_probability: tf.Tensor | None = None, sample_weight: tf.Tensor | None = None,
             compute_batch_metrics: bool = True, extra_embeddings: tf.Tensor | None = None,
             extra_ids: tf.Tensor | None = None) -> tf.Tensor:
        """Returns the scalar loss (mean over the global batch).

        Args:
          query_embeddings: float32 [batch, dim].
          item_embeddings: float32 [batch, dim]; row i is query i's positive.
          item_ids: [batch] ids compared for accidental-hit removal: int64 catalog positions, or strings
            (``sampled``, ``mixed`` and ``full`` need the int64 catalog positions).
          item_probability: float32 [batch], each item's sampling probability.
          sample_weight: float32 [batch] >= 0, each query's loss factor, or None (all ones).
          extra_embeddings: float32 [S, dim], the embeddings of the rows :meth:`sample` drew
            (``sampled``/``mixed``) or of the whole catalog in order (``full``).
          extra_ids: int64 [S], their catalog rows (``sampled``/``mixed``).
        """
        if sample_weight is not None:
            sample_weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        if self.negatives != "in_batch":
            return self._catalog_loss(tf.cast(query_embeddings, tf.float32), tf.cast(item_embeddings, tf.float32),
                                      item_ids, tf.cast(extra_embeddings, tf.float32), extra_ids, sample_weight,
                                      compute_batch_metrics)
        item_embeddings = tf.cast(item_embeddings, tf.float32)
        if self.cross_replica_negatives:
            item_embeddings, item_ids, item_probability = self._global_candidates(
                item_embeddings, item_ids, item_probability)
        per_example = self.task(
            tf.cast(query_embeddings, tf.float32), item_embeddings,
            sample_weight=sample_weight,
            candidate_sampling_probability=item_probability if self.logq_correction else None,
            candidate_ids=item_ids if self.remove_accidental_hits else None,
            compute_metrics=False, compute_batch_metrics=compute_batch_metrics)
        return tf.nn.compute_average_loss(per_example)

    def _catalog_loss(self, queries, positives, positive_ids, extra, extra_ids, sample_weight, batch_metrics):
        """Softmax cross-entropy over [positives?, extra] candidates for the sampled, mixed and full modes."""
        positive_ids = tf.cast(tf.reshape(positive_ids, [-1]), tf.int64)
        batch = tf.shape(queries)[0]
        if self.negatives == "full":
            # Each catalog item is one column, so the positive's column is its row and nothing else can be a hit.
            logits = tf.matmul(queries, extra, transpose_b=True) / self.temperature
            labels = tf.one_hot(positive_ids, tf.shape(extra)[0])
            negative = tf.logical_and(self.catalog_candidates[None] < 0.5, labels < 0.5)
            logits = tf.where(negative, tf.fill(tf.shape(logits), -1e9), logits)
        else:
            extra_ids = tf.cast(extra_ids, tf.int64)
            num_s = tf.cast(self.num_sampled, tf.float32)
            q_of = self._sampling_probability()
            if self.negatives == "sampled":
                # Column 0 holds each query's own positive; columns 1.. the S drawn items.
                scores = tf.concat([tf.reduce_sum(queries * positives, -1, keepdims=True),
                                    tf.matmul(queries, extra, transpose_b=True)], 1) / self.temperature
                candidate_ids = tf.concat([positive_ids[:, None], tf.tile(extra_ids[None], [batch, 1])], 1)
                # [batch, 1 + S]; a validation positive outside the candidates has q = 0
                log_count = tf.math.log(tf.maximum(num_s * tf.gather(q_of, candidate_ids), 1e-30))
                own = tf.one_hot(tf.zeros([batch], tf.int32), 1 + tf.shape(extra)[0])
            else:  # mixed: columns 0..B-1 the batch's positives (the diagonal is each query's), then the S drawn
                ids = tf.concat([positive_ids, extra_ids], 0)
                scores = tf.matmul(queries, tf.concat([positives, extra], 0), transpose_b=True) / self.temperature
                candidate_ids = tf.tile(ids[None], [batch, 1])
                expected = tf.cast(batch, tf.float32) * tf.gather(self.catalog_probability, ids) + num_s * tf.gather(
                    q_of, ids)
                log_count = tf.tile(tf.math.log(expected)[None], [batch, 1])
                own = tf.one_hot(tf.range(batch), tf.shape(ids)[0])
            logits = scores - log_count if self.logq_correction else scores
            if self.remove_accidental_hits:
                hit = tf.logical_and(tf.equal(positive_ids[:, None], candidate_ids), own < 0.5)
                logits = tf.where(hit, tf.fill(tf.shape(logits), -1e9), logits)
            labels = own
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
        if sample_weight is not None:
            per_example *= sample_weight
        if batch_metrics:
            for metric in self.task._batch_metrics:  # weighted like tfrs.tasks.Retrieval's own (in_batch)
                metric.update_state(labels, logits, sample_weight=sample_weight)
        return tf.nn.compute_average_loss(per_example)

    def _global_candidates(self, items: tf.Tensor, ids: tf.Tensor, probability: tf.Tensor | None):
        """Every replica's candidates, rotated so this replica's own come first.

        ``tfrs.tasks.Retrieval`` labels query i with candidate i (``tf.eye``), so
        the gathered rows are rolled by this replica's offset in the global batch.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return items, ids, probability
        # tf.identity: an input pipeline's tensor may carry no device, which the multi-worker gather rejects.
        def gather(t):
            return ctx.all_gather(tf.identity(t), axis=0)

        sizes = gather(tf.shape(items)[:1])  # per-replica batch sizes (may differ)
        shift = -tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
        items = tf.roll(gather(items), shift, axis=0)  # differentiable
        if self.remove_accidental_hits:
            # Collectives carry no strings; ids are only compared for equality.
            if ids.dtype == tf.string:
                ids = tf.strings.to_hash_bucket_fast(ids, 2**62)
            ids = tf.roll(gather(ids), shift, axis=0)
        if self.logq_correction and probability is not None:
            probability = tf.roll(gather(tf.cast(probability, tf.float32)), shift, axis=0)
        return items, ids, probability

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "logq_correction": self.logq_correction,
                "remove_accidental_hits": self.remove_accidental_hits,
                "num_hard_negatives": self.num_hard_negatives, "batch_metric_ks": list(self.batch_metric_ks),
                "cross_replica_negatives": self.cross_replica_negatives, "negatives": self.negatives,
                "num_sampled": self.num_sampled, "sampling": self.sampling}


tf.keras.utils.register_keras_serializable("tfrec")(RetrievalTask)
