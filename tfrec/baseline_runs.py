"""Which baselines a run compares its model with, and with what budget; each timed and kept in the job dir.

``eval.baselines`` names them (``BASELINES``): ``popularity``, ``bm25``
(BM25 of the query text over the item texts, :mod:`tfrec.lexical`) and
``content`` (the untrained text encoder's query-item similarity), none
trained, ``id_sequence`` (an ID-only model over the same history window,
:mod:`tfrec.baselines`) and ``id_two_tower`` (user id -> item id). A learned baseline is given the
model's own batch size, epoch budget and early stopping on the same seeded
validation sample (:class:`BaselineBudget`), never more, so no baseline can
cost more than the model's training. A new baseline is one entry in
``BASELINES``: ``run(cfg, data, split, budget) -> metrics`` and what it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec import config as config_lib
from tfrec import early_stopping, evaluate
from tfrec.baselines import bm25_baseline, content_baseline, id_sequence_baseline
from tfrec.data.dataset import RetrievalData
from tfrec.errors import ConfigError
from tfrec.progress import TrainingProgress

log = logging.getLogger("tfrec")
STEPS_PER_EXECUTION = 64  # id_two_tower's training steps per call of its compiled train step


class _RowLookup:
    """Ids -> embedding rows, as ``tf.keras.layers.StringLookup`` numbers them: row 0 for an unknown id, then
    the vocabulary in order. A dict over NumPy arrays: the Keras layer spent about 25 s at 10^6 interactions
    tracking its 50,000-entry vocabulary and specifying a 900,000-string input."""

    def __init__(self, vocabulary):
        self.row = {v: i + 1 for i, v in enumerate(vocabulary)}
        self.size = len(self.row) + 1

    def __call__(self, ids) -> tf.Tensor:
        """int64 [n] rows of ids [n]."""
        return tf.constant(np.fromiter((self.row.get(i, 0) for i in ids), np.int64, len(ids)))


def _epoch_rows(n: int, batch_size: int, rng: np.random.Generator) -> tf.data.Dataset:
    """Batches of the row numbers ``0 .. n - 1`` in the next order ``rng`` draws: one call (one dataset) per epoch.

    Like the model's epochs, each epoch sees other batches, and a rerun with
    the same seed sees the same ones. The order is drawn over row numbers, not
    (user, item) pairs, in NumPy, and each batch is a slice of it: reading
    an epoch's batches of 10^6 rows takes about 0.2 s this way, against 2.5 s
    through ``tf.data``'s shuffle (a 10^6 buffer, reshuffled at each pass).
    Nothing may cache it: a cache would replay the first epoch's order in
    every epoch.
    """
    rows = tf.constant(rng.permutation(n).astype(np.int64))
    return tf.data.Dataset.range(0, n, batch_size).map(lambda start: rows[start:start + batch_size])


def _uniform(seed: int) -> tf.keras.initializers.Initializer:
    """Keras' default ``Embedding`` initialiser (uniform in [-0.05, 0.05]) with its own seed."""
    return tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)


def id_two_tower_baseline(data: RetrievalData, split: str, ks: list[int], epochs: int = 10, dim: int = 64,
                          batch_size: int = 256, seed: int = 0, exclude_seen: bool = False,
                          monitor: str = "recall@10", patience: int | None = None) -> dict:
    """A plain TFRS id-only two-tower (user id -> item id), trained on the same split.

    Treated like the main model, and given no more: the caller's batch size
    and epoch budget, the training pairs reshuffled every epoch (seeded,
    :func:`_epoch_rows`), the model's early stopping (:mod:`tfrec.early_stopping`)
    on validation ``monitor`` (``patience`` None: every epoch runs), and the best epoch is the one evaluated
    (pass a validation split cut by :func:`tfrec.evaluate.sample_split` to keep
    those checks cheap). Adagrad (lr 0.1, as in the TFRS retrieval tutorial)
    updates only the embedding rows a batch touches; Adam rewrites both whole
    tables every step, so a step would cost O(users + items): 609 s against
    8 s for 10x the data in ``bench/scale.py``. Ids are numbered once, and
    ``STEPS_PER_EXECUTION`` steps run per compiled call: the same updates in the
    same order, at less than half the wall time on a loaded machine.
    """
    # Ids become embedding rows once, up front, so a step gathers rows instead of hashing 2 x batch_size
    # strings.
    user_rows, item_rows = _RowLookup(sorted(set(data.train.user_id))), _RowLookup(data.catalog.item_ids)
    # Keras' default Embedding initialiser, seeded from ``seed`` alone (no global seed is set).
    user_model = tf.keras.layers.Embedding(user_rows.size, dim, embeddings_initializer=_uniform(seed))
    item_model = tf.keras.layers.Embedding(item_rows.size, dim, embeddings_initializer=_uniform(seed + 1))

    class IdTwoTower(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user_model, self.item_model = user_model, item_model
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            return self.task(self.user_model(features["user_id"]), self.item_model(features["item_id"]),
                             compute_metrics=False)

    model = IdTwoTower()
    # Many steps per call of the compiled train step: the same updates in the same order, without a Python
    # round trip (and a wait for a free core on a loaded machine) after every batch.
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1), steps_per_execution=STEPS_PER_EXECUTION)
    train_users, train_items = user_rows(data.train.user_id), item_rows(data.train.item_id)
    order = np.random.default_rng(seed)  # a new order of the training pairs every epoch, the same in every rerun
    val_users = user_rows(data.validation.user_id)
    eval_users = user_rows(getattr(data, split).user_id)
    k = [int(monitor.split("@")[1])]
    best, rule = None, early_stopping.EarlyStopping(epochs if patience is None else patience)  # None: never stop
    lines = TrainingProgress(-(-len(data.train) // batch_size), epochs, batch_size, "id_two_tower", estimate=False)
    for epoch in range(epochs):
        ds = _epoch_rows(len(data.train), batch_size, order)
        model.fit(ds.map(lambda rows: {"user_id": tf.gather(train_users, rows),
                                       "item_id": tf.gather(train_items, rows)}), initial_epoch=epoch,
                  epochs=epoch + 1, verbose=0, callbacks=[lines])
        items = model.item_model(item_rows(data.catalog.item_ids)).numpy()
        if epochs == 1:  # the only epoch is the best: no validation pass to pay for
            best = (model.user_model(eval_users).numpy(), items)
            break
        value = evaluate.evaluate_embeddings(model.user_model(val_users).numpy(), items, data, "validation", k,
                                             exclude_seen)[monitor]
        decision = rule.update(epoch, value)
        if decision == early_stopping.IMPROVED:
            best = (model.user_model(eval_users).numpy(), items)
        elif decision == early_stopping.STOP:
            break
    targets, exclude = evaluate._targets_and_exclusions(data, split, exclude_seen)
    return evaluate.metrics_from_ranks(evaluate.target_ranks(best[0], best[1], targets, exclude), ks)


@dataclass
class BaselineBudget:
    """What every baseline is given: the model's own split, batch size and epoch budget, never more.

    Attributes:
      ks: the cut-offs of the metrics.
      exclude_seen: leave each user's training items out of the ranking.
      batch_size, epochs, patience: the model's ``train.batch_size``, ``train.epochs`` and
        ``train.early_stopping_patience``.
      monitor: the early-stopping metric (``recall@10``), on the run's validation sample.
      seed: the run's seed.
    """

    ks: list[int]
    exclude_seen: bool = False
    batch_size: int = 256
    epochs: int = 10
    patience: int | None = None
    monitor: str = "recall@10"
    seed: int = 0


@dataclass
class Baseline:
    """A named baseline: ``run(cfg, data, split, budget) -> metrics`` and what it needs from the data.

    ``needs_users``: a user id column; ``needs_in_memory``: the training
    interactions in memory (not streamed). :func:`unavailable` says why one cannot run.
    """

    run: Callable[..., dict]  # (cfg, data, split, budget) -> metrics
    needs_users: bool = False
    needs_in_memory: bool = False
    needs_history: bool = False  # queries built from each user's recent items (history_item_ids)
    needs_query_text: bool = False  # a query text column (data.interactions.query_column)
    needs_item_text: bool = False  # item texts (data.items.text_columns)
    reads_text_caches: bool = False  # run(..., text_caches=(query_cache, item_cache)): the frozen encoders' outputs


def _popularity(cfg, data: RetrievalData, split: str, budget: BaselineBudget) -> dict:
    return evaluate.popularity_baseline(data, split, budget.ks, budget.exclude_seen)


def _bm25(cfg, data: RetrievalData, split: str, budget: BaselineBudget) -> dict:
    return bm25_baseline(data, split, budget.ks, budget.exclude_seen)


def _content(cfg, data: RetrievalData, split: str, budget: BaselineBudget, text_caches=None) -> dict:
    query_cache, item_cache = text_caches or (None, None)
    return content_baseline(cfg, data, split, budget.ks, budget.exclude_seen, query_cache=query_cache,
                            item_cache=item_cache)


def _id_sequence(cfg, data: RetrievalData, split: str, budget: BaselineBudget) -> dict:
    # The model's own config carries the budget (batch size, epochs, early stopping, negatives) to this baseline.
    return id_sequence_baseline(cfg, data, split, budget.ks, budget.exclude_seen)


def _id_two_tower(cfg, data: RetrievalData, split: str, budget: BaselineBudget) -> dict:
    return id_two_tower_baseline(data, split, budget.ks, epochs=budget.epochs, batch_size=budget.batch_size,
                                 seed=budget.seed, exclude_seen=budget.exclude_seen, monitor=budget.monitor,
                                 patience=budget.patience)


# ``eval.baselines`` names these; a new baseline is one entry here.
BASELINES: dict[str, Baseline] = {
    "popularity": Baseline(_popularity),
    "bm25": Baseline(_bm25, needs_query_text=True),
    "content": Baseline(_content, needs_item_text=True, reads_text_caches=True),
    "id_sequence": Baseline(_id_sequence, needs_in_memory=True, needs_history=True),
    "id_two_tower": Baseline(_id_two_tower, needs_users=True, needs_in_memory=True),
}


def unavailable(baseline: Baseline, data: RetrievalData, has_users: bool, has_query_text: bool = True
                ) -> str | None:
    """Why ``baseline`` cannot run on ``data`` (one phrase for the log), or None when it can."""
    if baseline.needs_users and not has_users:
        return "it needs data.interactions.user_id_column"
    if baseline.needs_query_text and not has_query_text:
        return "it needs query text (data.interactions.query_column)"
    if baseline.needs_item_text and not any(data.catalog.texts):
        return "it needs item text (data.items.text_columns)"
    if baseline.needs_history and data.train.history is None:
        return "it needs history-built queries (data.interactions.query_history_items)"
    if baseline.needs_in_memory and data.stream is not None:
        return "it trains on the training interactions in memory; these were streamed"
    return None


def baseline_names(choice: bool | list[str]) -> list[str]:
    """``eval.baselines`` as names: true = every baseline, false = none; an unknown name is a ConfigError."""
    if isinstance(choice, bool):
        return list(BASELINES) if choice else []
    for name in choice:
        if name not in BASELINES:
            raise ConfigError("eval.baselines", f"unknown baseline {name!r}; expected some of {', '.join(BASELINES)}")
    return list(dict.fromkeys(choice))


def run_baselines(cfg, data: RetrievalData, split: str, times=None, cache=None, text_caches=None
                  ) -> dict[str, dict]:
    """Every baseline ``cfg.eval.baselines`` names, on ``split``, each with the model's budget.

    Args:
      cfg: the run's :class:`tfrec.config.Config` (``eval.*`` and the ``train.*`` budget).
      times: a :class:`tfrec.timings.StageTimes` (each baseline is stage ``baseline:<name>``), or None.
      cache: a :class:`tfrec.job_cache.JobCache`: a baseline finished by an earlier run of the same
        config and data is reused (the log says so), or None.
      text_caches: ``(query_cache, item_cache)``, the run's frozen encoder outputs
        (:class:`tfrec.data.pipeline.TextCache` or None each): ``content`` reads them instead of encoding
        the texts again.
    Returns:
      name -> metrics, for the baselines that could run.
    """
    validation = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
    budget = BaselineBudget(ks=list(cfg.eval.ks), exclude_seen=cfg.eval.exclude_seen,
                            batch_size=cfg.train.batch_size, epochs=cfg.train.epochs,
                            patience=cfg.train.early_stopping_patience, monitor=cfg.train.early_stopping_metric,
                            seed=cfg.train.seed)
    results = {}
    for name in baseline_names(cfg.eval.baselines):
        baseline = BASELINES[name]
        why = unavailable(baseline, data, bool(cfg.data.interactions.user_id_column),
                          cfg.data.interactions.query_column is not None)
        if why:
            log.info("eval: no %s baseline (%s)", name, why)
            continue
        identity = {"baseline": name, "split": split, "budget": dataclasses.asdict(budget), "counts": data.counts,
                    "data": config_lib.to_dict(cfg)["data"], "validation_max_queries": cfg.eval.validation_max_queries,
                    "test_max_queries": cfg.eval.test_max_queries}
        started = time.perf_counter()
        stage = times.stage(f"baseline:{name}", examples=data.num_train) if times else contextlib.nullcontext()
        with stage:
            extra = {"text_caches": text_caches} if baseline.reads_text_caches else {}
            compute = lambda: baseline.run(cfg, validation, split, budget, **extra)  # noqa: E731  (validation: sampled)
            metrics, reused = cache.baseline(name, identity, compute) if cache else (compute(), False)
        log.info("eval: %s baseline %s", name, "reused from the job dir's cache" if reused
                 else f"in {time.perf_counter() - started:.0f}s")
        results[name] = metrics
    return results
