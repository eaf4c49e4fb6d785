"""The training stages, each a plain function, and :func:`fit`, which runs them in order.

    load_data -> build_model -> build_features -> train -> evaluate_model -> export_model

``fit(config, job_dir)`` is what ``python -m trainer.task`` runs; a notebook or a
pipeline calls the same function, or the stages one by one. The model is built
before the features because the features' caches are the model's own frozen
encoders applied once to every distinct text.

The job dir receives ``params.yaml`` (the resolved config), ``checkpoints/``
(calling ``fit`` again with the same config resumes), ``tensorboard/``,
``eval.json``, ``timings.json`` and ``export/``. It may be a local folder or any
``tf.io.gfile`` URL (``gs://``, ``ram://``): every write goes through :mod:`tfrec.fileio`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from tfrec import (baseline_runs, config as config_lib, evaluate, fileio, hybrid, job_cache, job_dir as job_dir_lib,
                   progress, ranking_eval, runtime, summaries, text_skip, timings, training, vertex)
from tfrec.baselines import cold_items_section
from tfrec.config import Config
from tfrec.data import dataset, pipeline, stream
from tfrec.data.dataset import RetrievalData
from tfrec.export.savedmodel import export_run
from tfrec.models import TwoTowerModel, build_model as build_two_tower
from tfrec.towers import host_features

log = logging.getLogger("tfrec")


@dataclass
class Run:
    """One finished :func:`fit`.

    Attributes:
      config: the resolved config the run trained with.
      model: the trained :class:`tfrec.models.TwoTowerModel` (best epoch's weights).
      metrics: the ``eval.json`` content (``{}`` on a non-chief worker).
      job_dir: the run's folder (a ``str`` when it is a URL, as is ``export_dir``).
      export_dir: the first published SavedModel version folder
        (``job_dir/export/<model_name>/<version>``), or None when export is off
        (or on a non-chief worker).
    """

    config: Config
    model: TwoTowerModel
    metrics: dict
    job_dir: Path | str
    export_dir: Path | str | None


@dataclass
class Features:
    """What the model is fed, built once per run by :func:`build_features`.

    Attributes:
      item_probability: float32 [num_items], each item's share of the training
        interactions (the logQ correction's sampling probability).
      query_cache: the frozen query encoder's outputs per distinct query text, or None.
      item_cache: the frozen item text encoder's outputs per item text, or None.
      all_items: the item tower's features for the whole catalog, in catalog order.
      steps_per_epoch: training steps per epoch.
    """

    item_probability: np.ndarray
    query_cache: pipeline.TextCache | None
    item_cache: pipeline.TextCache | None
    all_items: dict
    steps_per_epoch: int


@dataclass
class Evaluation:
    """The test split's results, from :func:`evaluate_model`.

    Attributes:
      model: the model's retrieval metrics (``recall@K``, ``ndcg@K``, ``mrr``).
      baselines: each baseline's metrics, by name.
      ranking: the ranking head's report, or None when the model has no head.
      query_embeddings: float32 [num_test_queries, d] (those measured); item_embeddings: float32 [num_items, d].
    """

    model: dict
    baselines: dict
    ranking: dict | None
    query_embeddings: np.ndarray
    item_embeddings: np.ndarray
    cold_items: dict | None = None  # eval.cold_items_fraction: the cold targets' section
    extra: dict | None = None  # more eval.json entries (test_queries; tfrec.hybrid: model_variants, hybrid)


# ------------------------------------------------------------------ stages
def load_data(cfg: Config, base_dir: str | Path) -> RetrievalData:
    """Reads, checks and splits the interactions and the catalog (``cfg.data``); holds out cold items."""
    data = dataset.load(cfg.data, base_dir=str(base_dir))
    data = dataset.hold_out_cold_items(data, cfg.eval.cold_items_fraction, cfg.train.seed)
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data.counts.items()))
    return data


def build_model(cfg: Config, data: RetrievalData, strategy: tf.distribute.Strategy | None = None
                ) -> TwoTowerModel:
    """The two-tower model for ``data``'s catalog, built under ``strategy`` and ``train.mixed_precision``."""
    strategy = strategy or tf.distribute.get_strategy()
    runtime.set_precision(cfg.train.mixed_precision)  # layers keep the policy they are built under
    try:
        with strategy.scope():
            return build_two_tower(cfg, data.catalog, data.item_probability(), trained_items=data.item_counts() > 0)
    finally:
        runtime.set_precision("none")


def build_features(cfg: Config, data: RetrievalData, model: TwoTowerModel,
                   cache: job_cache.JobCache | None = None) -> Features:
    """Sampling probabilities, the frozen encoders' caches and the catalog's item features.

    ``cache``: the job dir's cache (:func:`fit` passes it), where the frozen encoders' outputs are kept for a
    rerun; None encodes every text and keeps nothing.
    """
    item_probability = data.item_probability()
    query_encoder, item_encoder = model.query_tower.encoder, model.item_tower.text_encoder
    frozen_once = cfg.train.cache_frozen_encoders  # each distinct text encoded once
    query_cache = item_cache = None
    if frozen_once and query_encoder is not None and query_encoder.frozen and data.stream is not None:
        # The distinct training queries grow with the data, which a streamed run must not hold in memory.
        log.info("cache: query texts of a streamed run are encoded as they are read, not cached")
    elif frozen_once and query_encoder is not None and query_encoder.frozen:
        texts = data.train.query_text + data.validation.query_text + data.test.query_text
        query_cache = pipeline.TextCache(texts, job_cache.encode(cache, "query", query_encoder),
                                         progress="encoding queries")
        log.info("cache: %d distinct query texts encoded once (frozen encoder)", len(query_cache.texts))
    if frozen_once and item_encoder is not None and item_encoder.frozen:
        item_cache = pipeline.TextCache(data.catalog.texts, job_cache.encode(cache, "item", item_encoder),
                                        progress="encoding items")
        log.info("cache: %d item texts encoded once (frozen encoder)", len(item_cache.texts))
    steps = math.ceil(data.num_train / cfg.train.batch_size)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    all_items = pipeline.item_features(data.catalog, np.arange(len(data.catalog)), item_cache)
    model.set_catalog(all_items)  # when items are embedded by row: history items, catalog negatives
    return Features(item_probability, query_cache, item_cache, all_items, steps)


def training_input(cfg: Config, data: RetrievalData, model: TwoTowerModel, features: Features,
                   strategy: tf.distribute.Strategy, skip_batches: int = 0) -> tf.data.Dataset:
    """The endless, seeded training stream from batch ``skip_batches`` on (a resumed run skips what it saw).

    Yields batches of ``train.batch_size`` examples; under host preprocessing
    (TPU, XLA) the text is tokenised and ids looked up in tf.data, so the model
    sees fixed-shape ints only.
    """
    batch = cfg.train.batch_size
    host = runtime.host_preprocessing(strategy, cfg.train.jit_compile)

    def on_host(ds):
        return ds.map(lambda f: host_features(model.query_tower, model.item_tower, f),
                      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE) if host else ds

    if data.stream is None:  # in memory; under multi_worker Keras shards the batches across workers
        ds = pipeline.make_dataset(pipeline.training_features(data.train, data.catalog, features.item_probability,
                                                              features.query_cache, features.item_cache,
                                                              model.query_tower.encoder is not None),
                                   batch, shuffle=True, seed=cfg.train.seed,
                                   drop_remainder=len(data.train) >= 2 * batch
                                   or runtime.kind(strategy) in ("tpu", "multi_worker"), repeat=True)
        return on_host(ds.skip(skip_batches) if skip_batches else ds)
    return strategy.distribute_datasets_from_function(  # each worker reads its own shards
        lambda ctx: on_host(stream.make_dataset(data.stream, data.catalog, features.item_probability, batch,
                                                cfg.train.seed, ctx, features.query_cache, features.item_cache,
                                                skip_batches)))


def validation_input(cfg: Config, data: RetrievalData, model: TwoTowerModel, features: Features,
                     strategy: tf.distribute.Strategy) -> tuple[tf.data.Dataset, int | None]:
    """The validation split as training batches for Keras' ``val_loss``, and the steps to take: once through
    (None); under TPU or multi-worker full batches, repeated, so every worker runs the same steps."""
    batch, fixed = cfg.train.batch_size, runtime.kind(strategy) in ("tpu", "multi_worker")
    ds = pipeline.make_dataset(pipeline.training_features(data.validation, data.catalog, features.item_probability,
                                                          features.query_cache, features.item_cache),
                               batch, drop_remainder=fixed, repeat=fixed)
    if runtime.host_preprocessing(strategy, cfg.train.jit_compile):
        ds = ds.map(lambda f: host_features(model.query_tower, model.item_tower, f))
    return ds, (max(1, len(data.validation) // batch) if fixed else None)


def embed_split(model: TwoTowerModel, data: RetrievalData, features: Features, split: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``split``'s queries and the whole catalog through the towers: float32 [n, d] and [num_items, d]."""
    queries = pipeline.query_inputs(getattr(data, split), features.query_cache, model.query_tower)
    return (evaluate.embed(model.query_tower, queries, progress=f"embedding {split} queries"),
            evaluate.embed(model.item_tower, features.all_items, progress="embedding the catalog"))


def validation_metrics(cfg: Config, model: TwoTowerModel, data: RetrievalData, features: Features) -> dict:
    """Full-catalog metrics (and the ranking head's) on a seeded validation sample, the same in every epoch."""
    data = evaluate.sample_split(data, "validation", cfg.eval.validation_max_queries, cfg.train.seed)
    q, items = embed_split(model, data, features, "validation")
    metrics = evaluate.evaluate_embeddings(q, items, data, "validation", cfg.eval.ks, cfg.eval.exclude_seen)
    if model.ranking is not None:  # the ranking head's rmse/mae (or auc/logloss) on the validation pairs
        metrics.update(ranking_eval.label_metrics(model, data, "validation", q, items))
    return metrics


def train(cfg: Config, model: TwoTowerModel, data: RetrievalData, features: Features,
          strategy: tf.distribute.Strategy, ckpt_dir: fileio.Location, tensorboard_dir: fileio.Location,
          times: timings.StageTimes | None = None) -> dict:
    """Compiles and fits ``model``, resuming from ``ckpt_dir``; loads the best epoch's weights.

    Checkpoints each epoch (and every ``train.checkpoint_every_steps``) and stops
    early on ``val_<train.early_stopping_metric>``; ``times`` (None: untimed) records each epoch as a
    ``train`` call and its validation pass as ``validation``. Returns the checkpoint state:
    ``{"epoch", "batch", "best_epoch", "best", "stopped", ...}`` (0-based epochs).
    """
    steps = features.steps_per_epoch
    with strategy.scope():
        head_opt = training.compile_model(model, cfg, steps * cfg.train.epochs)
        sample = next(iter(pipeline.make_dataset(pipeline.training_features(
            data.validation.take(range(2)), data.catalog, features.item_probability, features.query_cache,
            features.item_cache, model.query_tower.encoder is not None), 2)))
        model.query_tower(sample), model.item_tower(sample)  # create variables before any restore
        text_skip.start_from_encoder(model, data.catalog.texts, features.item_cache)  # the skip's start, if any
    encoder_opt = {} if model.encoder_optimizer is None else {"encoder_optimizer": model.encoder_optimizer}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=head_opt, **encoder_opt)
    saver = training.CheckpointAndEarlyStop(str(ckpt_dir), checkpoint, f"val_{cfg.train.early_stopping_metric}",
                                            cfg.train.early_stopping_patience, cfg.train.checkpoint_every_steps)
    initial_epoch = saver.state["epoch"] + 1
    resume_batch = min(saver.state["batch"], steps - 1)  # > 0: killed inside an epoch after a step checkpoint
    resume_from = saver.resume_path()
    if resume_from:
        checkpoint.restore(resume_from).expect_partial()
        inside = f", batch {resume_batch}/{steps}" if resume_batch else ""
        log.info("resume: restored epoch %d%s from %s", initial_epoch, inside, resume_from)

    def validate() -> dict:
        with timings.stage(times, "validation"):
            return validation_metrics(cfg, model, data, features)
    if text_skip.starts_at_encoder(model):  # untrained, the towers rank as the encoder: epoch 0 competes for best
        saver.evaluate_start(model, validate, cfg.train.epochs)

    # TensorBoard runs last so that it sees the validation metrics and examples/s the callbacks before it add;
    # the progress lines come after validation and the checkpoint, whose time they measure.
    epoch_times = [times.epoch_callback("train", data.num_train)] if times is not None else []
    callbacks = [training.ValidationMetrics(validate), saver,
                 progress.TrainingProgress(steps, cfg.train.epochs, cfg.train.batch_size, full_softmax_items=(
                     len(data.catalog) if cfg.retrieval.negatives == "full" else None),
                     validation_steps=math.ceil(len(data.validation) / cfg.train.batch_size)),
                 training.EpochLog(cfg.train.epochs), *epoch_times,
                 training.TensorBoard(str(tensorboard_dir), update_freq=cfg.train.log_every_steps,
                                      histogram_freq=cfg.train.histogram_every_epochs, write_graph=False,
                                      profile_batch=0)]
    if initial_epoch < cfg.train.epochs and not saver.state["stopped"]:
        log.info("train: %d examples%s, %d steps/epoch, up to %d epochs", data.num_train,
                 f" streamed from {len(data.stream.files)} shards" if data.stream is not None else "", steps,
                 cfg.train.epochs)
        validation, validation_steps = validation_input(cfg, data, model, features, strategy)
        for epoch, last, leg_steps, skip in saver.fits(steps, cfg.train.epochs):
            if saver.state["stopped"]:
                break
            model.fit(training_input(cfg, data, model, features, strategy, skip), epochs=last,
                      initial_epoch=epoch, steps_per_epoch=leg_steps, callbacks=callbacks,
                      validation_data=validation, validation_steps=validation_steps,
                      verbose=1 if sys.stdout.isatty() else 0)
    else:
        log.info("train: already complete in %s (epoch %d)", ckpt_dir, initial_epoch)
    model.load_weights(str(fileio.join(ckpt_dir, "best", "weights"))).expect_partial()
    log.info("train: kept epoch %d (val %s=%.4f)", saver.state["best_epoch"] + 1, cfg.train.early_stopping_metric,
             saver.state["best"])
    return saver.state


def evaluate_model(cfg: Config, model: TwoTowerModel, data: RetrievalData, features: Features,
                   split: str = "test", times: timings.StageTimes | None = None,
                   cache: job_cache.JobCache | None = None) -> Evaluation:
    """Full-catalog metrics of ``model`` and the baselines ``eval.baselines`` names, all on one seeded sample of at
    most ``eval.test_max_queries`` queries of ``split``. ``times``: the stages (None: untimed); ``cache``: baseline
    results kept for a rerun (None: none kept)."""
    data, queries = evaluate.test_sample(data, split, cfg.eval.test_max_queries, cfg.train.seed)
    with timings.stage(times, "evaluate", examples=len(getattr(data, split))):
        q, item_embeddings = embed_split(model, data, features, split)
        ranks = evaluate.split_ranks(q, item_embeddings, data, split, cfg.eval.exclude_seen)  # the hybrid's too
        results = evaluate.metrics_from_ranks(ranks, cfg.eval.ks)
    baselines = baseline_runs.run_baselines(cfg, data, split, times, cache, (features.query_cache, features.item_cache))
    cold = None if data.cold_items is None else cold_items_section(cfg, data, q, item_embeddings, features.item_cache)
    extra = {f"{split}_queries": queries}  # eval.json: how many of the split's queries were measured
    if hybrid.applies(cfg, model, data):  # the served score: dense, or dense + BM25 as validation chose
        with timings.stage(times, "hybrid", examples=len(getattr(data, split))):
            results, served, (q, item_embeddings) = hybrid.evaluate_served(
                cfg, data, model, lambda d, s: embed_split(model, d, features, s), (q, item_embeddings), results, ranks)
            extra.update(served)
    variants = {f"model:{name}": m for name, m in extra.get("model_variants", {}).items()}
    print("\n" + evaluate.format_table({"model": results, **variants, **baselines}) + "\n", flush=True)
    ranking = None
    if model.ranking is not None:
        with timings.stage(times, "evaluate"):
            ranking = ranking_eval.evaluate_ranking(model, data, split, q, item_embeddings, cfg.eval.exclude_seen)
        print(ranking_eval.format_report(ranking) + "\n", flush=True)
    return Evaluation(results, baselines, ranking, q, item_embeddings, cold, extra)


def export_model(cfg: Config, job: fileio.Location, model: TwoTowerModel, data: RetrievalData, evaluation: Evaluation,
                 model_dir: str | None = None, times: timings.StageTimes | None = None) -> list[fileio.Location]:
    """Publishes the SavedModel(s) of ``export.index`` in ``job/export`` or ``model_dir``; returns the versions
    (``times``: records ``export`` and ``index``, None: untimed)."""
    with timings.stage(times, "export", examples=len(data.catalog)):
        return export_run(cfg, job, model, data, evaluation.item_embeddings, model_dir=model_dir,
                          query_embeddings=evaluation.query_embeddings, times=times)


def write_report(cfg: Config, job: fileio.Location, data: RetrievalData, evaluation: Evaluation, train_state: dict,
                 seconds: float, tensorboard_dir: str | Path | None = None) -> dict:
    """Writes ``job/eval.json`` and TensorBoard's hparams and projector; returns the ``eval.json`` dict."""
    report: dict[str, Any] = {
        "model": evaluation.model, "baselines": evaluation.baselines,
        "data": {"counts": data.counts, "skipped": data.skipped},
        "training": {"best_epoch": train_state["best_epoch"] + 1, "epochs_run": train_state["epoch"] + 1,
                     "seconds": round(seconds, 1)},
        "config_hash": config_lib.config_hash(cfg)}
    report.update({k: v for k, v in (("ranking", evaluation.ranking), ("cold_items", evaluation.cold_items))
                   if v is not None})
    report.update(evaluation.extra or {})
    tb = str(tensorboard_dir or fileio.join(job, "tensorboard"))
    summaries.write_hparams(tb, summaries.compared_settings(cfg), {f"test_{k}": v for k, v in evaluation.model.items()})
    summaries.write_projector(tb, evaluation.item_embeddings, data.catalog)
    fileio.write_text(fileio.join(job, "eval.json"), json.dumps(report, indent=2))
    log.info("eval: wrote %s", fileio.join(job, "eval.json"))
    return report


@contextlib.contextmanager
def _worker_dir() -> Iterator[Path | None]:
    """None on the chief; on another worker a temporary folder for what only the chief keeps."""
    if runtime.is_chief():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="tfrec-worker-") as scratch:
        log.info("non-chief worker: writing to %s (deleted at the end)", scratch)
        yield Path(scratch)


# --------------------------------------------------------------------- fit
def fit(config: Config, job_dir: str | Path, outputs: vertex.OutputDirs | None = None) -> Run:
    """Trains, evaluates and exports one run in ``job_dir`` (``outputs``: :mod:`tfrec.vertex`); rerunning resumes.

    Under ``runtime.strategy=multi_worker`` a non-chief worker runs every training step with the others (collective
    ops need all workers) but writes its checkpoints, TensorBoard logs and data into a temporary folder deleted at the
    end; evaluation, ``eval.json`` and the export are the chief's (a non-chief returns a Run with ``metrics == {}``).
    """
    with _worker_dir() as scratch:
        # set-up: job dir, seed, strategy
        started = time.time()
        job, out = fileio.location(job_dir), vertex.output_folders(job_dir, outputs)  # checkpoints, logs, export
        job_dir_lib.prepare(config, job, write_params=False)  # params.yaml once the data has resolved the config
        tf.keras.utils.set_random_seed(config.train.seed)
        strategy = runtime.make_strategy(config.runtime)
        times, cache = timings.StageTimes(), job_cache.JobCache(job, enabled=scratch is None)  # timings.json; cache/

        # input and model (the encode stage: the encoders' weights and the frozen encoders' outputs)
        with times.stage("read"):
            data = load_data(config, scratch or job)
        config = config_lib.resolve.for_data(config, data)  # the data-dependent keys left open, each logged
        job_dir_lib.prepare(config, job, write_params=scratch is None)
        with times.stage("encode"):
            model = build_model(config, data, strategy)
            features = build_features(config, data, model, cache)

        # train (a non-chief keeps a private copy of the checkpoints, resuming like the chief)
        ckpt_dir, tb_dir = (out.checkpoint_dir, out.tensorboard_dir) if scratch is None else (
            scratch / "checkpoints", scratch / "tensorboard")
        if scratch is not None and fileio.isdir(out.checkpoint_dir):
            fileio.copy_tree(out.checkpoint_dir, ckpt_dir)
        state = train(config, model, data, features, strategy, ckpt_dir, tb_dir, times)
        if scratch is not None:
            return Run(config, model, {}, job, None)  # evaluation, eval.json and the export are the chief's

        # evaluate: the model and the baselines on the test split
        evaluation = evaluate_model(config, model, data, features, times=times, cache=cache)
        config = hybrid.keep_choice(config, job, evaluation.extra)  # params.yaml: the served fusion and weight
        report = write_report(config, job, data, evaluation, state, time.time() - started, tb_dir)

        # export
        published = (export_model(config, job, model, data, evaluation, out.model_dir, times)
                     if config.export.enabled else [])
        fileio.write_text(fileio.join(job, "timings.json"), json.dumps(times.to_dict(), indent=2))
        log.info("done in %.0fs; %s (timings.json)", time.time() - started, times.summary())
        return Run(config, model, report, job, published[0] if published else None)
