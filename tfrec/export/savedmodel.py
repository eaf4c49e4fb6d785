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

from tfrec import config as config_lib, index as index_lib
from tfrec import evaluate, fileio, timings
from tfrec.data import pipeline
from tfrec.index.base import with_history
from tfrec.encoders.lora import adapters_merged
from tfrec.export import layout, saving
from tfrec.export.indexes import ExportRefused  # noqa: F401  (export_run raises it)
from tfrec.export.indexes import build_index_of_kind, check_recall, index_kinds, model_name_for
from tfrec.export.catalog_lookup import CatalogLookup, rank_candidates, rerank
from tfrec.hybrid import lexical_scorer, served_choice
from tfrec.index.hybrid import HybridIndex

log = logging.getLogger("tfrec")
# Optional inputs' defaults, made per module (a tensor made at import would start TF before a multi-worker strategy
# can configure it): exclusions [1, 0], text [1], history [1, 1], labels NaN [1, 1]; each broadcast to the batch.
_DEFAULTS = {"exclusions": lambda: tf.constant([[]], dtype=tf.string), "text": lambda: tf.constant([""]),
             "history": lambda: tf.constant([[""]]), "labels": lambda: tf.constant([[float("nan")]])}

QUERY_INPUTS = ("query_text", "history_item_ids")  # what the query tower reads of a request


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
        # One trace of the query tower (its encoder's graph), called by every query signature, not one each.
        query_spec = {spec.name: tf.TensorSpec(spec.shape, spec.dtype) for spec, _ in self._query_inputs(False)}
        self.query_tower_call = tf.function(lambda features: self.query_tower(features, training=False),
                                            input_signature=[query_spec])  # a signature: traced once, not twice
        exclusions = [(tf.TensorSpec([None, None], tf.string, name="exclude_item_ids"), _DEFAULTS["exclusions"]())]
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
            inputs.append((tf.TensorSpec([None], tf.string, name="query_text"), _DEFAULTS["text"]()))
        if self.query_tower.history_encoder is not None:
            inputs.append((tf.TensorSpec([None, None], tf.string, name="history_item_ids"), _DEFAULTS["history"]()))
        if len(inputs) == 1:
            inputs = [(inputs[0][0], None)]
        if with_labels and self._reads_labels():  # NaN: labels unknown, the head scores without them
            inputs.append((tf.TensorSpec([None, None], tf.float32, name="history_labels"), _DEFAULTS["labels"]()))
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
        """The query tower's float32 [batch, d] for the query inputs of ``features`` (through one traced call)."""
        return self.query_tower_call({k: features[k] for k in QUERY_INPUTS if k in features})

    def _search(self, query: tf.Tensor, features: dict, exclude_item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The index's top k for ``query`` [batch, d], without ``exclude_item_ids`` [1 or batch, e] (and the
        history, with ``exclude_history``): (scores float32 [batch, k], item_ids string [batch, k])."""
        batch = tf.shape(query)[0]
        exclude = tf.broadcast_to(exclude_item_ids, tf.stack([batch, tf.shape(exclude_item_ids)[1]]))
        if self.exclude_history:
            exclude = with_history(features["history_item_ids"], exclude)
        # Index code is plain graph code (explicit tf.cond); autograph's conversion cache
        # mixed up methods of the three index classes when all are exported in one process.
        if getattr(self.index, "hybrid", False):  # dense + BM25 (tfrec.index.hybrid)
            return tf.autograph.experimental.do_not_convert(self.index.search_hybrid)(
                query, features["query_text"], exclude)
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


def export_run(cfg: config_lib.Config, job_dir: str | Path, model, data, item_embeddings: np.ndarray,
               index: str | None = None, k: int | None = None, query_embeddings: np.ndarray | None = None,
               index_params: dict | None = None, model_dir: str | Path | None = None,
               times: timings.StageTimes | None = None) -> list[Path]:
    """Builds every requested index, checks the approximate ones, then publishes one version each.

    Args:
      cfg: the run's config.
      job_dir: the run's folder; output goes to ``job_dir/export``.
      model: the trained :class:`tfrec.models.TwoTowerModel`. LoRA adapters, if any, are folded
        into the encoder's weights for the export (plain BERT variables), then put back: the model is
        left as it came.
      data: :class:`tfrec.data.dataset.RetrievalData` (catalog, counts, test queries).
      item_embeddings: float32 [num_items, d] from the trained item tower.
      index: brute_force | ivf | scann | all (default ``export.index``); with ``export.quantization: int8``
        brute_force and ivf are built in their int8 forms (brute_force_int8, ivf_int8).
      k: results per query (default ``export.k``).
      query_embeddings: float32 [n, d] held-out queries for the recall gate: the test queries ``eval.json``
        measured (``eval.test_max_queries``'s seeded sample); default: those through the query tower.
      index_params: constructor arguments for the approximate indexes (e.g. nprobe).
      model_dir: Vertex AI's ``AIP_MODEL_DIR``: the layout goes there instead of ``job_dir/export``, and the
        first version's files also at its top (``saved_model.pb``, where Vertex AI loads a model).
      times: the run's timer (records the ``index`` stage), or None.
    Returns:
      The published version folders. Raises ExportRefused (exit code 2) if an
      approximate index's recall@10 is below ``export.min_recall``.
    """
    with adapters_merged(model) as merged:  # serve plain BERT: LoRA adapters folded into its weights
        if merged:
            log.info("lora: merged %d adapters into the encoder for the export", merged)
        return _publish(cfg, job_dir, model, data, item_embeddings, index, k, query_embeddings, index_params,
                        model_dir, times)


def _publish(cfg: config_lib.Config, job_dir: str | Path, model, data, item_embeddings: np.ndarray,
             index: str | None, k: int | None, query_embeddings: np.ndarray | None, index_params: dict | None,
             model_dir: str | Path | None, times: timings.StageTimes | None) -> list[Path]:
    """:func:`export_run`'s indexes and versions, for a model without LoRA adapters (same arguments)."""
    export_root = fileio.location(model_dir) if model_dir else fileio.join(job_dir, "export")  # may be a URL
    k = k or cfg.export.k
    kinds = index_kinds(index or cfg.export.index, cfg.export.quantization)
    item_ids = data.catalog.item_ids
    choice = served_choice(job_dir) if model.query_tower.encoder is not None else None
    lexical = None if choice is None else lexical_scorer(data)  # shared by every kind
    if lexical is not None:
        log.info("export: hybrid search, dense + BM25 by %s with lexical weight %s (eval.json's hybrid)", *choice)
    built = []
    # The test queries eval.json measured (the same seeded sample, as query_embeddings holds them): the recall gate's.
    measured = evaluate.sample_split(data, "test", cfg.eval.test_max_queries, cfg.train.seed)
    with timings.stage(times, "index", examples=len(item_ids)):
        for kind in kinds:
            idx, note = build_index_of_kind(kind, item_embeddings, item_ids, k, (index_params or {}).get(kind))
            if note:
                log.info("export: %s", note)
            if lexical is not None:
                idx = HybridIndex(idx, lexical, item_embeddings, item_ids, choice[1], choice[0])
            info = {"kind": idx.kind, "requested": kind, "k": k, "note": note, "params": idx.params()}
            if idx.kind != "brute_force":
                if query_embeddings is None:
                    queries = test_queries(model, measured)
                    query_embeddings = evaluate.embed(model.query_tower, queries, progress="embedding test queries")
                info["recall"] = check_recall(idx, item_embeddings, item_ids, query_embeddings, k,
                                              cfg.export.min_recall, measured.test.query_text)
                info["min_recall"] = cfg.export.min_recall
            built.append((kind, model_name_for(cfg.export.model_name, kind), idx, info))

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
        options = index_lib.save_options_for(idx)

        def write(folder: str, module=module, report=report, options=options) -> None:
            saving.save(module, folder, module.signatures(), options)
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
    queries = {}
    if model.query_tower.encoder is not None:
        queries["query_text"] = np.array(data.test.query_text, dtype=object)
    if model.query_tower.history_encoder is not None:
        queries.update(pipeline.history_features(data.test))
    return queries

