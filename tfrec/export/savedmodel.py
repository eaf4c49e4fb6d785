"""Export: SavedModels that take raw text and return top-k items, in TF Serving's layout.

:func:`export_run` (called by :func:`tfrec.fit`, and by ``python -m serving.export
--job-dir DIR`` for a finished run) writes, for each index kind, ``DIR/export/<name>/<version>/`` (``<name>`` =
``export.model_name`` for exact brute force, ``<name>_ivf`` and
``<name>_scann`` for the approximate indexes; with ``export.quantization: int8``,
``<name>_int8`` and ``<name>_ivf_int8``) plus ``DIR/export/models.config``
and ``DIR/export/batching_parameters.txt``. Each version is written under a temporary name
and renamed into place when complete (:func:`tfrec.export.layout.publish_version`).

Signatures of every SavedModel (tokenisation is inside the graph):

* ``serving_default`` = ``retrieve``: the query inputs, optional
  ``exclude_item_ids`` string [batch, e] ("" padded; default: none) ->
  ``item_ids`` string [batch, k], ``scores`` float32 [batch, k]. With
  ``export.exclude_history`` on (``auto``: when the run was evaluated with
  ``eval.exclude_seen``), the request's own ``history_item_ids`` are left out
  of the results too, as the evaluation left the user's seen items out.
  The query inputs are what the query tower reads: ``query_text`` string
  [batch] and/or ``history_item_ids`` string [batch, h] (the user's recent
  item ids, most recent first, "" padded). A model with both takes either or
  both (an omitted input defaults to empty; "" text or an all-"" history row
  contributes nothing).
* ``embed_query``: the query inputs -> ``embedding`` float32 [batch, d].
* ``embed_item``: ``item_id``, ``item_text`` (and ``item_<column>`` per
  categorical column), string [batch] -> ``embedding`` float32 [batch, d].

When the model has a ranking head (``ranking.weight > 0``), also:

* ``rank``: the query inputs, ``item_ids`` string [batch, c] ->
  ``scores`` float32 [batch, c] (predicted rating, or probability for
  ``ranking.objective: binary``; ids not in the catalog and ``""`` score -inf).
* ``retrieve_and_rank``: the query inputs, optional ``exclude_item_ids`` -> the
  top k retrieved items re-ordered by the ranking head: ``item_ids`` string
  [batch, k], ``ranking_scores`` and ``retrieval_scores`` float32 [batch, k].

A head with ``rated_history`` (and a history query) also reads ``history_labels``
float32 [batch, h] in both: the user's label of each history item, aligned with
``history_item_ids``; its default (NaN) means unknown, and the head scores without them.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec import config as config_lib
from tfrec import evaluate, fileio
from tfrec import index as index_lib
from tfrec.index.base import with_history
from tfrec import timings
from tfrec.errors import UserError
from tfrec.export import layout
from tfrec.export.catalog_lookup import CatalogLookup, rank_candidates, rerank

log = logging.getLogger("tfrec")
_NO_EXCLUSIONS = tf.constant([[]], dtype=tf.string)  # [1, 0]: broadcast to [batch, 0]
_NO_TEXT = tf.constant([""])  # [1]: broadcast to [batch]
_NO_HISTORY = tf.constant([[""]])  # [1, 1]: broadcast to [batch, 1]
_NO_LABELS = tf.constant([[float("nan")]])  # [1, 1]: broadcast to the history's [batch, h]; NaN = unknown


def _query_features(inputs: dict) -> dict:
    """The served query inputs -> the query tower's features, broadcast to one batch.

    With both ``query_text`` [b] and ``history_item_ids`` [b, h], either may be a
    default ([1] / [1, 1]) that stands for "not given"; ``history_labels`` follows the history.
    """
    if len(inputs) == 1 or "history_item_ids" not in inputs:
        return dict(inputs)
    history = inputs["history_item_ids"]
    batch = tf.shape(history)[0]
    if "query_text" in inputs:
        batch = tf.maximum(tf.shape(inputs["query_text"])[0], batch)
    shape = tf.stack([batch, tf.shape(history)[1]])
    features = {"history_item_ids": tf.broadcast_to(history, shape)}
    if "query_text" in inputs:
        features["query_text"] = tf.broadcast_to(inputs["query_text"], [batch])
    if "history_labels" in inputs:
        features["history_labels"] = tf.broadcast_to(inputs["history_labels"], shape)
    return features


class RetrievalModule(tf.Module):
    """What a served version holds: the towers and one index over the catalog.

    Args:
      query_tower: the query inputs (``query_text`` and/or ``history_item_ids``) -> float32 [batch, d].
      item_tower: item features -> float32 [batch, d].
      index: a :mod:`tfrec.index` index over the catalog's item embeddings.
      categorical_columns: the item tower's categorical columns.
      ranking_head: :class:`tfrec.ranking.RankingHead`, or None (no ranking signatures).
      catalog: :class:`tfrec.export.catalog_lookup.CatalogLookup` (item id -> embedding), with ``ranking_head``.
      exclude_history: ``retrieve`` and ``retrieve_and_rank`` never return the request's own
        ``history_item_ids`` (added to its ``exclude_item_ids``); needs a query tower that reads the history.
    """

    def __init__(self, query_tower, item_tower, index, categorical_columns: list[str], ranking_head=None,
                 catalog=None, exclude_history: bool = False):
        super().__init__(name="tfrec_retrieval")
        if exclude_history and query_tower.history_encoder is None:
            raise ValueError("exclude_history needs a query tower that reads history_item_ids")
        self.query_tower, self.item_tower, self.index = query_tower, item_tower, index
        self.exclude_history = bool(exclude_history)
        self.categorical_columns = list(categorical_columns)
        item_spec = {"item_id": tf.TensorSpec([None], tf.string, name="item_id"),
                     "item_text": tf.TensorSpec([None], tf.string, name="item_text")}
        for col in self.categorical_columns:
            item_spec[f"item_{col}"] = tf.TensorSpec([None], tf.string, name=f"item_{col}")
        self.embed_item = tf.function(self._embed_item, input_signature=[item_spec])
        self.ranking_head, self.catalog = ranking_head, catalog
        exclusions = [(tf.TensorSpec([None, None], tf.string, name="exclude_item_ids"), _NO_EXCLUSIONS)]
        self.retrieve = self._query_function(self._retrieve, optional=exclusions)
        self.embed_query = self._query_function(self._embed_query)
        if ranking_head is not None:
            self.rank = self._query_function(
                self._rank, required=[tf.TensorSpec([None, None], tf.string, name="item_ids")], with_labels=True)
            self.retrieve_and_rank = self._query_function(self._retrieve_and_rank, optional=exclusions,
                                                          with_labels=True)

    def _reads_labels(self) -> bool:
        """The ranking head reads the user's labels of the history items (``history_labels``)."""
        return self.ranking_head is not None and self.ranking_head.rated_history is not None \
            and self.query_tower.history_encoder is not None

    def _query_inputs(self, with_labels: bool) -> list[tuple[tf.TensorSpec, tf.Tensor]]:
        """(spec, default) of each query input; a model with one query input gets no default (it is required)."""
        inputs = []
        if self.query_tower.encoder is not None:
            inputs.append((tf.TensorSpec([None], tf.string, name="query_text"), _NO_TEXT))
        if self.query_tower.history_encoder is not None:
            inputs.append((tf.TensorSpec([None, None], tf.string, name="history_item_ids"), _NO_HISTORY))
        if len(inputs) == 1:
            inputs = [(inputs[0][0], None)]
        if with_labels and self._reads_labels():  # NaN: labels unknown, the head scores without them
            inputs.append((tf.TensorSpec([None, None], tf.float32, name="history_labels"), _NO_LABELS))
        return inputs

    def _query_function(self, body, required: list[tf.TensorSpec] = (),
                        optional: list[tuple[tf.TensorSpec, tf.Tensor]] = (), with_labels: bool = False):
        """A tf.function over the query inputs plus ``required`` and ``optional`` (spec, default) inputs.

        ``body(features, inputs)`` gets the query tower's ``features`` (query inputs broadcast to one
        batch) and every input by name. Python defaults become the SignatureDef's defaults, so TF
        Serving may omit those inputs. ``with_labels``: also ``history_labels`` when the ranking head reads them.
        """
        query = self._query_inputs(with_labels)
        params = [(spec, None) for spec in required] + [q for q in query if q[1] is None]
        params += [q for q in query if q[1] is not None] + list(optional)
        query_names = [spec.name for spec, _ in query]
        signature = inspect.Signature([
            inspect.Parameter(spec.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              **({} if default is None else {"default": default})) for spec, default in params])

        def fn(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            inputs = dict(bound.arguments)
            return body(_query_features({n: inputs[n] for n in query_names}), inputs)

        fn.__signature__ = signature  # tf.function reads the parameter names and defaults from it
        return tf.function(fn, input_signature=[spec for spec, _ in params])

    def _query(self, features: dict) -> tf.Tensor:
        return self.query_tower(features, training=False)

    def _search(self, query: tf.Tensor, features: dict, exclude_item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The index's top k for ``query`` [batch, d], without ``exclude_item_ids`` [1 or batch, e] (and the
        history, with ``exclude_history``): (scores float32 [batch, k], item_ids string [batch, k])."""
        batch = tf.shape(query)[0]
        exclude = tf.broadcast_to(exclude_item_ids, tf.stack([batch, tf.shape(exclude_item_ids)[1]]))
        if self.exclude_history:
            exclude = with_history(features["history_item_ids"], exclude)
        # Index code is plain graph code (explicit tf.cond); autograph's conversion cache
        # mixed up methods of the three index classes when all are exported in one process.
        return tf.autograph.experimental.do_not_convert(self.index.search)(query, exclude)

    def _retrieve(self, features, inputs):
        scores, item_ids = self._search(self._query(features), features, inputs["exclude_item_ids"])
        return {"item_ids": item_ids, "scores": scores}

    def _embed_query(self, features, inputs):
        return {"embedding": self._query(features)}

    def _embed_item(self, features):
        return {"embedding": self.item_tower(features, training=False)}

    def _ranking_history(self, features: dict) -> dict | None:
        """The head's ``history`` from the served history ids (catalog embeddings) and labels, or None."""
        if not self._reads_labels():
            return None
        history = features["history_item_ids"]
        items, _, known = self.catalog.lookup(tf.reshape(history, [-1]))
        shape = tf.shape(history)
        return {"items": tf.reshape(items, tf.concat([shape, [-1]], 0)), "mask": tf.reshape(known, shape),
                "labels": tf.broadcast_to(features["history_labels"], shape)}

    def _rank(self, features, inputs):
        query = self._query(features)
        return {"scores": rank_candidates(self.ranking_head, self.catalog, query, inputs["item_ids"],
                                          self._ranking_history(features))}

    def _retrieve_and_rank(self, features, inputs):
        query = self._query(features)  # once, for both stages
        retrieval_scores, item_ids = self._search(query, features, inputs["exclude_item_ids"])
        ranking_scores = rank_candidates(self.ranking_head, self.catalog, query, item_ids,
                                         self._ranking_history(features))
        ranking_scores, item_ids, retrieval_scores = rerank(ranking_scores, item_ids, retrieval_scores)
        return {"item_ids": item_ids, "ranking_scores": ranking_scores, "retrieval_scores": retrieval_scores}

    def signatures(self) -> dict:
        # The tf.functions themselves (not concrete functions), so the
        # SignatureDef records exclude_item_ids' default and TF Serving may omit it.
        out = {"serving_default": self.retrieve, "retrieve": self.retrieve, "embed_query": self.embed_query,
               "embed_item": self.embed_item}
        if self.ranking_head is not None:
            out.update(rank=self.rank, retrieve_and_rank=self.retrieve_and_rank)
        return out


def excludes_history(cfg: config_lib.Config) -> tuple[bool, str]:
    """Whether the export leaves each request's history items out of its results, and why (for the log)."""
    if cfg.data.interactions.query_history_items is None:
        return False, "queries are text only"
    setting = cfg.export.exclude_history
    if setting == "auto":
        return cfg.eval.exclude_seen, f"export.exclude_history=auto follows eval.exclude_seen={cfg.eval.exclude_seen}"
    return setting, f"export.exclude_history={str(setting).lower()}"


def _index_kinds(choice: str, quantization: str = "none") -> list[str]:
    """Index kinds to export: ``export.index`` (all = the three), each in its int8 form if it has one and
    ``export.quantization`` is int8 (scann quantises already)."""
    kinds = ["brute_force", "ivf", "scann"] if choice == "all" else [choice]
    return [index_lib.INT8_KINDS.get(kind, kind) if quantization == "int8" else kind for kind in kinds]


def _model_name(base: str, kind: str) -> str:
    """brute_force -> <base>, brute_force_int8 -> <base>_int8, other kinds -> <base>_<kind>."""
    if kind.startswith("brute_force"):
        return base + kind[len("brute_force"):]
    return f"{base}_{kind}"


def _build_index(kind: str, item_embeddings: np.ndarray, item_ids: list[str], k: int, params: dict | None = None):
    if kind == "brute_force":
        return index_lib.BruteForceIndex(item_embeddings, item_ids, k), None
    if kind == "brute_force_int8":
        return index_lib.BruteForceInt8Index(item_embeddings, item_ids, k), None
    return index_lib.build_index(kind, item_embeddings, item_ids, k, **(params or {}))


class ExportRefused(UserError):
    """An approximate index missed ``export.min_recall``; nothing was published."""


def check_recall(idx, item_embeddings: np.ndarray, item_ids: list[str], query_embeddings: np.ndarray, k: int,
                 min_recall: float) -> dict[str, float]:
    """Recall of ``idx`` against exact search on held-out queries; raises ExportRefused below the gate.

    Args:
      query_embeddings: float32 [num_queries, d], e.g. the test split's queries.
    Returns:
      ``{"recall@10": r10, "recall@K": rK}`` (K = the index's k).
    """
    exact = index_lib.BruteForceIndex(item_embeddings, item_ids, k)
    cutoffs = sorted({min(10, k), k})
    recall = {f"recall@{c}": index_lib.recall_against_exact(idx, exact, query_embeddings, k=c) for c in cutoffs}
    gate = recall[f"recall@{min(10, k)}"]
    log.info("export: %s index recall against exact search on %d held-out queries: %s", idx.kind,
             len(query_embeddings), ", ".join(f"{m}={v:.3f}" for m, v in recall.items()))
    if gate < min_recall:
        raise ExportRefused(f"export: the {idx.kind} index reached recall@{min(10, k)}={gate:.3f} against exact "
                            f"search on {len(query_embeddings)} held-out queries, below export.min_recall="
                            f"{min_recall}; no version was published ({_recall_advice(idx.kind)}, or lower "
                            "export.min_recall)")
    return recall


def _recall_advice(kind: str) -> str:
    if kind == "brute_force_int8":
        return "int8 codes lose too much here: export.quantization: none"
    advice = "search more partitions/leaves"
    return advice + (", or export.quantization: none" if kind.endswith("_int8") else "")


def export_run(cfg: config_lib.Config, job_dir: str | Path, model, data, item_embeddings: np.ndarray,
               index: str | None = None, k: int | None = None, query_embeddings: np.ndarray | None = None,
               index_params: dict | None = None, model_dir: str | Path | None = None) -> list[Path]:
    """Builds every requested index, checks the approximate ones, then publishes one version each.

    Args:
      cfg: the run's config.
      job_dir: the run's folder; output goes to ``job_dir/export``.
      model: the trained :class:`tfrec.models.TwoTowerModel`. LoRA adapters, if any, are merged
        into the encoder's weights first (in place: the same function, plain BERT variables).
      data: :class:`tfrec.data.dataset.RetrievalData` (catalog, counts, test queries).
      item_embeddings: float32 [num_items, d] from the trained item tower.
      index: brute_force | ivf | scann | all (default ``export.index``); with ``export.quantization: int8``
        brute_force and ivf are built in their int8 forms (brute_force_int8, ivf_int8).
      k: results per query (default ``export.k``).
      query_embeddings: float32 [n, d] held-out queries for the recall gate
        (default: the test split's queries through the query tower).
      index_params: constructor arguments for the approximate indexes (e.g. nprobe).
      model_dir: Vertex AI's ``AIP_MODEL_DIR``: the layout goes there instead of ``job_dir/export``, and the
        first version's files also at its top (``saved_model.pb``, where Vertex AI loads a model).
    Returns:
      The published version folders. Raises ExportRefused (exit code 2) if an
      approximate index's recall@10 is below ``export.min_recall``.
    """
    export_root = fileio.location(model_dir) if model_dir else fileio.join(job_dir, "export")  # may be a URL
    k = k or cfg.export.k
    if cfg.model.query_encoder.lora_rank:  # serve plain BERT: the adapters folded into its weights
        from tfrec.encoders.lora import merge_adapters

        merged = merge_adapters(model)
        if merged:
            log.info("lora: merged %d adapters into the encoder before export", merged)
    kinds = _index_kinds(index or cfg.export.index, cfg.export.quantization)
    item_ids = data.catalog.item_ids
    built = []
    with timings.stage("index", examples=len(item_ids)):  # in a run's timings.json (tfrec.run.fit)
        for kind in kinds:
            idx, note = _build_index(kind, item_embeddings, item_ids, k, (index_params or {}).get(kind))
            if note:
                log.info("export: %s", note)
            info = {"kind": idx.kind, "requested": kind, "k": k, "note": note, "params": idx.params()}
            if idx.kind != "brute_force":
                if query_embeddings is None:
                    queries = test_queries(model, data)
                    query_embeddings = evaluate.embed(model.query_tower, queries, progress="embedding test queries")
                info["recall"] = check_recall(idx, item_embeddings, item_ids, query_embeddings, k,
                                              cfg.export.min_recall)
                info["min_recall"] = cfg.export.min_recall
            built.append((kind, _model_name(cfg.export.model_name, kind), idx, info))

    version = max(layout.next_version(fileio.join(export_root, name)) for _, name, _, _ in built)
    ranking_head, catalog = getattr(model, "ranking_head", None), None
    if ranking_head is not None:  # one lookup table, shared by every index kind's module
        catalog = CatalogLookup(data.catalog.item_ids, item_embeddings, data.catalog.categorical)
    exclude_history, why = excludes_history(cfg)
    if model.query_tower.history_encoder is not None:
        log.info("export: retrieve %s the request's history_item_ids in its results (%s)",
                 "leaves out" if exclude_history else "keeps", why)
    published = []
    for kind, name, idx, info in built:
        t0 = time.time()
        module = RetrievalModule(model.query_tower, model.item_tower, idx, list(data.catalog.categorical),
                                 ranking_head, catalog, exclude_history=exclude_history)
        report = {"model_name": name, "version": version, "index": info, "exclude_history": exclude_history,
                  "exclude_history_reason": why, "data": data.counts,
                  "skipped": data.skipped, "config_hash": config_lib.config_hash(cfg),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if idx.kind == "scann" else None

        def write(folder: str, module=module, report=report, options=options) -> None:
            tf.saved_model.save(module, folder, signatures=module.signatures(), options=options)
            extra = Path(folder) / "assets.extra"
            extra.mkdir(exist_ok=True)
            (extra / "export_report.json").write_text(json.dumps(report, indent=2))
            with open(extra / "items.tsv", "w", encoding="utf-8") as f:
                f.write("item_id\ttext\n")
                for item, text in zip(data.catalog.item_ids, data.catalog.texts):
                    f.write(f"{item}\t{text.replace(chr(9), ' ').replace(chr(10), ' ')}\n")

        path = layout.publish_version(fileio.join(export_root, name), write, version=version)
        log.info("export: %s (%s index, k=%d) in %.0fs", path, idx.kind, k, time.time() - t0)
        published.append(path)
    # Model folders are those holding a version (AIP_MODEL_DIR also holds a SavedModel's own variables/ etc.).
    layout.write_models_config(export_root, layout.model_names(export_root))
    layout.write_batching_parameters(export_root)
    if model_dir and published:
        layout.copy_version_to_top(published[0], model_dir)
    return published


def test_queries(model, data) -> dict:
    """The query tower's inputs for the test split: ``query_text`` and/or ``history_item_ids`` arrays."""
    from tfrec.data import pipeline

    queries = {}
    if model.query_tower.encoder is not None:
        queries["query_text"] = np.array(data.test.query_text, dtype=object)
    if model.query_tower.history_encoder is not None:
        queries.update(pipeline.history_features(data.test))
    return queries


def load_trained(job_dir: str | Path):
    """Rebuilds a finished run's model from ``params.yaml`` and its best weights.

    Returns (cfg, model, data).
    """
    from tfrec.data import dataset, pipeline
    from tfrec.models import build_model

    job = fileio.location(job_dir)  # a local Path or a URL (tf.io.gfile)
    params = fileio.join(job, "params.yaml")
    if not fileio.isfile(params):
        raise UserError(f"{job}: no params.yaml; not a tfrec job dir (train first with python -m trainer.task)")
    cfg = config_lib.validate(config_lib.from_dict(config_lib.read_yaml(params)))
    best = fileio.join(job, "checkpoints", "best", "weights.index")
    if not fileio.isfile(best):
        raise UserError(f"{job}: no trained weights at {best}")
    data = dataset.load(cfg.data, base_dir=str(job))
    model = build_model(cfg, data.catalog, data.item_probability())
    if model.query_tower.history_encoder is not None or model.retrieval.negatives != "in_batch":
        # The catalog table's values come back with the weights; only its shapes are needed here.
        table = pipeline.item_features(data.catalog, np.arange(len(data.catalog)))
        encoder = model.item_tower.text_encoder
        if encoder is not None and encoder.frozen and cfg.train.cache_frozen_encoders:
            del table["item_text"]
            table["item_text_encoding"] = np.zeros([len(data.catalog), encoder.hidden_size], np.float32)
        model.item_tower.set_catalog(table)
    sample = next(iter(pipeline.make_dataset(
        pipeline.training_features(data.validation.take(range(2)), data.catalog, data.item_probability(),
                                   query_text=model.query_tower.encoder is not None), 2)))
    model.query_tower(sample), model.item_tower(sample)
    model.load_weights(str(fileio.join(job, "checkpoints", "best", "weights"))).expect_partial()
    return cfg, model, data
