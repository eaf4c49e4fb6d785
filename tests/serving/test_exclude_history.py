"""A history-query run evaluated with seen items left out: its export serves what the evaluation ranked.

A tiny run (the smoke catalog, queries built from each user's last 3 items, leave_last split,
``eval.exclude_seen: true``) is trained and exported; then, for every test user:

* asked with the user's history alone, the export never returns one of those history items;
* asked with the history and the user's other training items in ``exclude_item_ids``, it returns the
  evaluator's own ranking (:func:`tfrec.evaluate.target_ranks`, which ``eval.json``'s recall@10 is computed
  from), first 10: the evaluation of a test query leaves out the user's training and validation items, and
  the history is made of those;
* the same through an IVF and a ScaNN index that search every partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from tfrec import evaluate
from tfrec import index as index_lib
from tfrec import run as run_lib
from tfrec.export.savedmodel import RetrievalModule


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """(run, per test user: history ids, training-seen ids, the evaluator's ranking of the catalog)."""
    job = tmp_path_factory.mktemp("exclude_history") / "job"
    config = tfrec.load_config(preset="smoke", overrides=[
        "data.interactions.query_column=null", "data.interactions.query_history_items=3",
        "model.query_encoder.trainable_layers=0", "retrieval.negatives=full", "eval.exclude_seen=true",
        "eval.baselines=false", "train.epochs=1"])
    run = tfrec.fit(config, job)
    data = run_lib.load_data(run.config, job)
    queries, items = run_lib.embed_split(run.model, data, run_lib.build_features(run.config, data, run.model), "test")
    targets, seen = evaluate._targets_and_exclusions(data, "test", exclude_seen=True)
    # The metric eval.json holds, from these very embeddings: the ranking below is the one it was computed from.
    ranks = evaluate.target_ranks(queries, items, targets, seen)
    assert evaluate.metrics_from_ranks(ranks, [10])["recall@10"] == run.metrics["model"]["recall@10"]
    n, ids = len(items), np.array(data.catalog.item_ids)
    # Every item's rank for every test query, by the evaluator's rule ([users, items]; seen items left out).
    every_rank = evaluate.target_ranks(np.repeat(queries, n, axis=0), items, np.tile(np.arange(n), len(queries)),
                                       [s for s in seen for _ in range(n)]).reshape(len(queries), n)
    users = []
    for row, history in enumerate(data.test.history):
        seen_ids = set(ids[seen[row]])
        order = np.argsort(every_rank[row], kind="stable")
        users.append(([ids[i] if i >= 0 else "" for i in history], seen_ids,
                      [ids[i] for i in order if ids[i] not in seen_ids]))
    return run, users, items, ids


def _ask(retrieve, history: list[str], exclude: list[str]) -> list[str]:
    out = retrieve(history_item_ids=tf.constant([history]), exclude_item_ids=tf.constant([exclude or [""]]))
    return out["item_ids"].numpy()[0].astype(str).tolist()


def test_export_serves_the_evaluated_ranking_without_the_history(served_run):
    run, users, _, _ = served_run
    report = json.loads((Path(run.export_dir) / "assets.extra" / "export_report.json").read_text())
    assert report["exclude_history"] is True and "eval.exclude_seen=True" in report["exclude_history_reason"]
    retrieve = tfrec.load_export(run.export_dir).signatures["serving_default"]
    for history, seen, ranking in users:
        real = {h for h in history if h}
        assert real and not real & set(_ask(retrieve, history, []))
        others = sorted(seen - real)
        assert real <= seen  # the history is among the items the evaluation left out
        assert _ask(retrieve, history, others) == ranking[:10], history


@pytest.mark.parametrize("kind", ["ivf", "scann"])
def test_every_index_kind_leaves_the_history_out(served_run, kind):
    run, users, items, ids = served_run
    if kind == "ivf":  # every partition probed: the exact answer
        idx = index_lib.IVFIndex(items, ids, 10, num_partitions=8, nprobe=8)
    else:
        idx = index_lib.ScannIndex(items, ids, 10, num_leaves=8, num_leaves_to_search=8, reorder_k=len(ids))
    module = RetrievalModule(run.model.query_tower, run.model.item_tower, idx, [], exclude_history=True)
    for history, seen, ranking in users:
        real = {h for h in history if h}
        assert _ask(module.retrieve, history, sorted(seen - real)) == ranking[:10], history
