"""``python -m trainer.task``: arguments -> config -> :func:`train`.

    python -m trainer.task [--preset NAME] [--config FILE.yaml] [--set dotted.key=value ...] [--job-dir DIR]

The job dir defaults to the parent of ``AIP_MODEL_DIR`` when Vertex AI sets it,
else ``runs/<preset>``. It receives ``params.yaml`` (the resolved config),
``checkpoints/`` (rerunning the same command resumes), ``tensorboard/``,
``eval.json`` and ``export/``. Exit code 0 on success; 2 on a user error, with
one line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trainer  # noqa: F401  (environment first)
from tfrec import config as config_lib
from tfrec.errors import UserError

log = logging.getLogger("tfrec")


def train(cfg: config_lib.Config, job_dir: str) -> dict:
    """Trains, evaluates and exports one run; returns the ``eval.json`` content.

    Under ``runtime.strategy=multi_worker`` a non-chief worker runs every
    training step with the others (collective ops need all workers) but writes
    its checkpoints, TensorBoard logs and data into a temporary folder deleted
    at the end; evaluation, ``eval.json`` and the export are the chief's (a
    non-chief returns ``{}``).
    """
    from tfrec import runtime

    if runtime.is_chief():
        return _train(cfg, job_dir, None)
    with tempfile.TemporaryDirectory(prefix="tfrec-worker-") as scratch:
        log.info("non-chief worker: writing to %s (deleted at the end)", scratch)
        return _train(cfg, job_dir, Path(scratch))


def _train(cfg: config_lib.Config, job_dir: str, scratch: Path | None) -> dict:
    import numpy as np
    import tensorflow as tf

    from tfrec import evaluate, runtime, training
    from tfrec.data import dataset, pipeline, stream
    from tfrec.models import build_model

    # --- set-up --------------------------------------------------------------
    started = time.time()
    job = Path(job_dir)
    chief = runtime.is_chief()
    try:
        job.mkdir(parents=True, exist_ok=True)
        _check_job_dir(job, cfg)
        if chief:
            (job / "params.yaml").write_text(config_lib.to_yaml(cfg))
    except OSError as e:
        raise UserError(f"{job}: cannot write the job dir ({e.strerror or e}); pick another --job-dir") from None
    tf.keras.utils.set_random_seed(cfg.train.seed)
    strategy = runtime.make_strategy(cfg.runtime)

    # --- input ---------------------------------------------------------------
    data = dataset.load(cfg.data, base_dir=str(scratch or job))
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data.counts.items()))
    item_probability = data.item_probability()

    # --- model ---------------------------------------------------------------
    runtime.set_precision(cfg.train.mixed_precision)  # layers keep the policy they are built under
    try:
        with strategy.scope():
            model = build_model(cfg, data.catalog)
    finally:
        runtime.set_precision("none")
    query_encoder, item_encoder = model.query_tower.encoder, model.item_tower.text_encoder
    cache = cfg.train.cache_frozen_encoders
    query_cache = item_cache = None
    if cache and query_encoder.frozen:
        train_texts = stream.query_texts(data.stream) if data.stream is not None else data.train.query_text
        texts = train_texts + data.validation.query_text + data.test.query_text
        query_cache = pipeline.TextCache(texts, query_encoder.encode_texts, progress="encoding queries")
        log.info("cache: %d distinct query texts encoded once (frozen encoder)", len(query_cache.texts))
    if cache and item_encoder is not None and item_encoder.frozen:
        item_cache = pipeline.TextCache(data.catalog.texts, item_encoder.encode_texts, progress="encoding items")
        log.info("cache: %d item texts encoded once (frozen encoder)", len(item_cache.texts))

    batch = cfg.train.batch_size
    steps = math.ceil(data.num_train / batch)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)

    def train_input(skip_batches: int):
        """The endless, seeded training stream from batch ``skip_batches`` on (a resumed run skips what it saw)."""
        host = runtime.host_preprocessing(strategy, cfg.train.jit_compile)

        def on_host(ds):  # tokenise and look ids up in tf.data: the model sees fixed-shape ints only
            from tfrec.towers import host_features

            return ds.map(lambda f: host_features(model.query_tower, model.item_tower, f),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE) if host else ds

        if data.stream is None:  # in memory; under multi_worker Keras shards the batches across workers
            ds = pipeline.make_dataset(pipeline.training_features(data.train, data.catalog, item_probability,
                                                                  query_cache, item_cache),
                                       batch, shuffle=True, seed=cfg.train.seed,
                                       drop_remainder=len(data.train) >= 2 * batch
                                       or runtime.kind(strategy) in ("tpu", "multi_worker"), repeat=True)
            return on_host(ds.skip(skip_batches) if skip_batches else ds)
        return strategy.distribute_datasets_from_function(  # each worker reads its own shards
            lambda ctx: on_host(stream.make_dataset(data.stream, data.catalog, item_probability, batch,
                                                    cfg.train.seed, ctx, query_cache, item_cache, skip_batches)))
    all_items = pipeline.item_features(data.catalog, np.arange(len(data.catalog)), item_cache)

    def embed_split(split: str) -> tuple[np.ndarray, np.ndarray]:
        queries = pipeline.query_features(getattr(data, split).query_text, query_cache)
        return (evaluate.embed(model.query_tower, queries, progress=f"embedding {split} queries"),
                evaluate.embed(model.item_tower, all_items, progress="embedding the catalog"))

    def validation_metrics() -> dict:
        q, items = embed_split("validation")
        metrics = evaluate.evaluate_embeddings(q, items, data, "validation", cfg.eval.ks, cfg.eval.exclude_seen)
        if model.ranking is not None:  # the ranking head's rmse/mae (or auc/logloss) on the validation pairs
            from tfrec.ranking import label_metrics

            metrics.update(label_metrics(model, data, "validation", q, items))
        return metrics

    with strategy.scope():
        head_opt = training.compile_model(model, cfg, steps * cfg.train.epochs)
        sample = next(iter(pipeline.make_dataset(pipeline.training_features(
            data.validation.take(range(2)), data.catalog, item_probability, query_cache, item_cache), 2)))
        model.query_tower(sample), model.item_tower(sample)  # create variables before any restore

    # --- train ---------------------------------------------------------------
    ckpt_dir = job / "checkpoints"
    if not chief:  # saving runs collective ops on every worker: a private copy, resuming like the chief
        ckpt_dir = scratch / "checkpoints"
        if (job / "checkpoints").is_dir():
            shutil.copytree(job / "checkpoints", ckpt_dir)
    state_objects = {"model": model, "optimizer": head_opt}
    if model.encoder_optimizer is not None:
        state_objects["encoder_optimizer"] = model.encoder_optimizer
    checkpoint = tf.train.Checkpoint(**state_objects)
    saver = training.CheckpointAndEarlyStop(str(ckpt_dir), checkpoint, f"val_{cfg.train.early_stopping_metric}",
                                            cfg.train.early_stopping_patience, cfg.train.checkpoint_every_steps)
    initial_epoch = saver.state["epoch"] + 1
    resume_batch = min(saver.state["batch"], steps - 1)  # > 0: killed inside an epoch after a step checkpoint
    resume_from = saver.resume_path()
    if resume_from:
        checkpoint.restore(resume_from).expect_partial()
        inside = f", batch {resume_batch}/{steps}" if resume_batch else ""
        log.info("resume: restored epoch %d%s from %s", initial_epoch, inside, resume_from)
    callbacks = [training.ValidationMetrics(validation_metrics), training.LearningRateLogger(), saver,
                 training.EpochLog(cfg.train.epochs),
                 tf.keras.callbacks.TensorBoard(str((scratch or job) / "tensorboard"), write_graph=False,
                                                profile_batch=0)]
    if initial_epoch < cfg.train.epochs and not saver.state["stopped"]:
        log.info("train: %d examples%s, %d steps/epoch, up to %d epochs", data.num_train,
                 f" streamed from {len(data.stream.files)} shards" if data.stream is not None else "", steps,
                 cfg.train.epochs)
        # The shuffled stream is seeded and repeated (one iterator for the whole fit), so skipping the batches
        # already trained on gives a resumed run exactly the batches an uninterrupted one would have seen.
        done = initial_epoch * steps + resume_batch
        if resume_batch:  # Keras' own mid-epoch resume hook (BackupAndRestore's): the first epoch starts there
            model._maybe_load_initial_counters_from_ckpt = lambda steps_per_epoch, epoch: (epoch, resume_batch)
        try:
            model.fit(train_input(done), epochs=cfg.train.epochs,
                      initial_epoch=initial_epoch, steps_per_epoch=steps, callbacks=callbacks,
                      verbose=1 if sys.stdout.isatty() else 0)
        finally:
            model.__dict__.pop("_maybe_load_initial_counters_from_ckpt", None)
    else:
        log.info("train: already complete in %s (epoch %d)", ckpt_dir, initial_epoch)
    model.load_weights(str(ckpt_dir / "best" / "weights")).expect_partial()
    log.info("train: kept epoch %d (val %s=%.4f)", saver.state["best_epoch"] + 1, cfg.train.early_stopping_metric,
             saver.state["best"])
    if not chief:
        return {}  # evaluation, eval.json and the export are the chief's

    # --- evaluate ------------------------------------------------------------
    q, item_embeddings = embed_split("test")
    results = {"model": evaluate.evaluate_embeddings(q, item_embeddings, data, "test", cfg.eval.ks,
                                                     cfg.eval.exclude_seen)}
    baselines = {}
    if cfg.eval.baselines:
        baselines["popularity"] = evaluate.popularity_baseline(data, "test", cfg.eval.ks, cfg.eval.exclude_seen)
        if cfg.data.interactions.user_id_column and data.stream is not None:
            log.info("eval: no id_two_tower baseline (it trains on the training interactions in memory; these "
                     "were streamed)")
        elif cfg.data.interactions.user_id_column:
            baselines["id_two_tower"] = evaluate.id_two_tower_baseline(
                data, "test", cfg.eval.ks, epochs=cfg.eval.id_two_tower_epochs, seed=cfg.train.seed,
                exclude_seen=cfg.eval.exclude_seen, monitor=cfg.train.early_stopping_metric)
    report = {"model": results["model"], "baselines": baselines,
              "data": {"counts": data.counts, "skipped": data.skipped},
              "training": {"best_epoch": saver.state["best_epoch"] + 1, "epochs_run": saver.state["epoch"] + 1,
                           "seconds": round(time.time() - started, 1)},
              "config_hash": config_lib.config_hash(cfg)}
    print("\n" + evaluate.format_table({"model": results["model"], **baselines}) + "\n", flush=True)
    if model.ranking is not None:
        from tfrec import ranking

        report["ranking"] = ranking.evaluate_ranking(model, data, "test", q, item_embeddings, cfg.eval.exclude_seen)
        print(ranking.format_report(report["ranking"]) + "\n", flush=True)

    # --- TensorBoard extras, eval.json and export (chief only) ---------------
    if chief:
        tb = str(job / "tensorboard")
        training.write_hparams(tb, training.flatten(config_lib.to_dict(cfg)),
                               {f"test_{k}": v for k, v in results["model"].items()})
        training.write_projector(tb, item_embeddings, data.catalog.titles)
        (job / "eval.json").write_text(json.dumps(report, indent=2))
        log.info("eval: wrote %s", job / "eval.json")
        if cfg.export.enabled:
            from serving import export

            export.export_run(cfg, job, model, data, item_embeddings, query_embeddings=q)
    log.info("done in %.0fs", time.time() - started)
    return report


def _check_job_dir(job: Path, cfg: config_lib.Config) -> None:
    """Refuses to resume a job dir written by a different training config."""
    previous = job / "params.yaml"
    if not previous.is_file() or not (job / "checkpoints").exists():
        return
    old = training_flat(config_lib.from_dict(config_lib.read_yaml(previous)))
    new = training_flat(cfg)
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differing:
        raise UserError(f"{job}: holds a run with a different config ({', '.join(differing[:8])}); "
                        "use another --job-dir or delete it")


def training_flat(cfg: config_lib.Config) -> dict:
    """The config keys that change what a checkpoint means (export/eval settings may change)."""
    from tfrec.training import flatten

    flat = flatten(config_lib.to_dict(cfg))
    return {k: v for k, v in flat.items() if k.split(".")[0] in ("data", "model", "retrieval", "ranking")}


def default_job_dir(preset: str) -> str:
    if os.environ.get("AIP_MODEL_DIR"):
        return str(Path(os.environ["AIP_MODEL_DIR"].rstrip("/")).parent)
    return os.path.join("runs", preset)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest and notebooks swap it)."""

    _tfrec = True

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(debug: bool = False) -> None:
    """One readable line per stage on stdout; TensorFlow and friends quiet unless --debug."""
    import warnings

    logger = logging.getLogger("tfrec")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False  # libraries that configure the root logger would print every line twice
    if not any(getattr(h, "_tfrec", False) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    for noisy in ("tensorflow", "absl", "h5py", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="movielens", help=f"one of: {', '.join(config_lib.list_presets())}")
    parser.add_argument("--config", help="a YAML file of overrides (applied after the preset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, repeatable, applied last (e.g. --set train.epochs=3)")
    parser.add_argument("--job-dir", "--job_dir", dest="job_dir", help="output folder (default: runs/<preset>)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow logs")
    args, unknown = parser.parse_known_args(argv)  # platforms inject their own flags
    if unknown:
        logging.getLogger("tfrec").debug("ignoring unknown arguments: %s", unknown)
    return args


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.ENOTDIR, errno.EISDIR}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.debug)
    try:
        cfg = config_lib.build(args.preset, args.config, args.set)
        job_dir = args.job_dir or default_job_dir(args.preset)
        log.info("tfrec: preset=%s job_dir=%s", args.preset, job_dir)
        train(cfg, job_dir)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or an unwritable folder outside the checkpoint writes
        if args.debug or e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {e.filename or 'writing'}: {e.strerror}; free space or fix permissions, then rerun the "
              "same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
