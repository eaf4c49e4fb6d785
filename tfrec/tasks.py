"""Tasks own the losses and metrics; the model only wires towers into them."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs


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
    """

    def __init__(self, temperature: float = 0.05, logq_correction: bool = True, remove_accidental_hits: bool = True,
                 num_hard_negatives: int | None = None, batch_metric_ks: tuple[int, ...] = (10,),
                 cross_replica_negatives: bool = False, **kwargs):
        # Logits, softmax and loss in float32 under any mixed-precision policy: a float32 layer does not
        # cast its inputs down, and the TFRS task inside is built under a float32 policy too.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.cross_replica_negatives = cross_replica_negatives
        self.temperature, self.logq_correction = temperature, logq_correction
        self.remove_accidental_hits, self.num_hard_negatives = remove_accidental_hits, num_hard_negatives
        self.batch_metric_ks = tuple(batch_metric_ks)
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

    def call(self, query_embeddings: tf.Tensor, item_embeddings: tf.Tensor, item_ids: tf.Tensor,
             item_probability: tf.Tensor | None = None, sample_weight: tf.Tensor | None = None,
             compute_batch_metrics: bool = True) -> tf.Tensor:
        """Returns the scalar loss (mean over the global batch).

        Args:
          query_embeddings: float32 [batch, dim].
          item_embeddings: float32 [batch, dim]; row i is query i's positive.
          item_ids: [batch] ids compared for accidental-hit removal: int64 catalog positions, or strings.
          item_probability: float32 [batch], each item's sampling probability.
          sample_weight: float32 [batch] or None.
        """
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
                "cross_replica_negatives": self.cross_replica_negatives}


tf.keras.utils.register_keras_serializable("tfrec")(RetrievalTask)
