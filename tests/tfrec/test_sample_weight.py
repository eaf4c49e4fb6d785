"""data.interactions.sample_weight_column: read with the interactions, carried as ``sample_weight``, and
applied to the retrieval loss in every negatives mode (worked out by hand on a 3-item catalog).

Catalog embeddings (2-d): item 0 = [1, 0], item 1 = [0, 1], item 2 = [-1, 0]; query i is item i's
embedding, its positive is item i; temperature 1, no logQ, so a logit is a dot product.

Per-example losses l_i (softmax cross-entropy of the positive's column):
  in_batch, full, sampled (draws [0, 1, 2], each query's own draw masked as an accidental hit):
    query 0: logits [1, 0, -1]  -> l0 = log(1 + e^-1 + e^-2) = 0.407606
    query 1: logits [0, 1, 0]   -> l1 = log(1 + 2e^-1)       = 0.551445
    query 2: logits [-1, 0, 1]  -> l2 = l0                   = 0.407606
  mixed (batch columns [0, 1, 2] then one draw, item 0; query 0's draw is masked):
    query 0: [1, 0, -1, masked] -> l0 = 0.407606
    query 1: [0, 1, 0, 0]       -> l1 = log(1 + 3e^-1)       = 0.743668
    query 2: [-1, 0, 1, -1]     -> l2 = log(1 + e^-1 + 2e^-2) = 0.493812
The loss is sum_i w_i l_i / 3: doubling query 1's weight adds exactly l1 / 3, a weight of 0 removes l1.
"""

import csv
import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec import config
from tfrec.data import dataset, pipeline, synthetic
from tfrec.errors import ConfigError, DataError
from tfrec.tasks import RetrievalTask

CATALOG = tf.constant([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
IDS = tf.constant([0, 1, 2], tf.int64)
L0 = math.log(1 + math.exp(-1) + math.exp(-2))
LOSSES = {  # per-example losses by hand (module docstring)
    "in_batch": (L0, math.log(1 + 2 * math.exp(-1)), L0),
    "full": (L0, math.log(1 + 2 * math.exp(-1)), L0),
    "sampled": (L0, math.log(1 + 2 * math.exp(-1)), L0),
    "mixed": (L0, math.log(1 + 3 * math.exp(-1)), math.log(1 + math.exp(-1) + 2 * math.exp(-2))),
}
DRAWS = {"in_batch": None, "full": None, "sampled": [0, 1, 2], "mixed": [0]}


def weighted_loss(negatives: str, weights, queries=CATALOG) -> tf.Tensor:
    draws = DRAWS[negatives]
    task = RetrievalTask(1.0, logq_correction=False, remove_accidental_hits=True, negatives=negatives,
                         num_sampled=len(draws) if draws else 0, batch_metric_ks=(1,))
    if negatives != "in_batch":
        task.set_catalog_probability(np.full(3, 1 / 3, np.float32))
    extra = CATALOG if negatives == "full" else None if draws is None else tf.gather(CATALOG, draws)
    extra_ids = None if draws is None else tf.constant(draws, tf.int64)
    weight = None if weights is None else tf.constant(weights, tf.float32)
    return task(queries, CATALOG, IDS, sample_weight=weight, extra_embeddings=extra, extra_ids=extra_ids)


@pytest.mark.parametrize("negatives", ["in_batch", "full", "sampled", "mixed"])
def test_weights_scale_each_examples_loss_by_hand(negatives):
    l0, l1, l2 = LOSSES[negatives]
    assert float(weighted_loss(negatives, None)) == pytest.approx((l0 + l1 + l2) / 3, abs=1e-5)
    assert float(weighted_loss(negatives, [1.0, 1.0, 1.0])) == pytest.approx((l0 + l1 + l2) / 3, abs=1e-5)
    doubled = float(weighted_loss(negatives, [1.0, 2.0, 1.0]))
    assert doubled == pytest.approx((l0 + 2 * l1 + l2) / 3, abs=1e-5)
    assert doubled - float(weighted_loss(negatives, None)) == pytest.approx(l1 / 3, abs=1e-5)
    assert float(weighted_loss(negatives, [1.0, 0.0, 1.0])) == pytest.approx((l0 + l2) / 3, abs=1e-5)


@pytest.mark.parametrize("negatives", ["in_batch", "full", "sampled", "mixed"])
def test_zero_weight_gives_its_query_no_gradient(negatives):
    queries = tf.Variable(CATALOG)
    with tf.GradientTape() as tape:
        loss = weighted_loss(negatives, [1.0, 0.0, 1.0], queries)
    grad = tape.gradient(loss, queries).numpy()
    assert np.all(grad[1] == 0.0) and np.any(grad[0] != 0.0)


@pytest.fixture(scope="module")
def weighted_files(tmp_path_factory):
    """The smoke data with a ``weight`` column (the rating halved) and a YAML using it."""
    root = tmp_path_factory.mktemp("weighted")
    synthetic.write_smoke(str(root))
    with open(root / "interactions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["weight"] = str(float(r["rating"]) / 2)
    write_rows(root / "interactions.csv", rows)
    return root, rows


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def weighted_cfg(root, interactions="interactions.csv", *sets):
    return config.build("smoke", None, [f"data.interactions.path={root / interactions}",
                                        f"data.items.path={root / 'items.csv'}",
                                        "data.interactions.sample_weight_column=weight", *sets])


def test_weights_are_read_and_carried_as_the_sample_weight_feature(weighted_files):
    root, rows = weighted_files
    data = dataset.load(weighted_cfg(root).data)
    for part in (data.train, data.validation, data.test):
        assert np.array_equal(part.weight, part.label / 2)  # each row keeps its own weight through the split
    feats = pipeline.training_features(data.train, data.catalog, data.item_probability())
    assert feats["sample_weight"].dtype == np.float32
    assert np.array_equal(feats["sample_weight"], data.train.label / 2)
    assert "sample_weight" not in pipeline.training_features(
        dataset.load(config.build("smoke", None, [f"data.interactions.path={root / 'interactions.csv'}",
                                                  f"data.items.path={root / 'items.csv'}"]).data).train,
        data.catalog, data.item_probability())


@pytest.mark.parametrize("value, expected", [("heavy", "expected a finite number, found 'heavy'"),
                                             ("-0.5", "expected a sample weight >= 0, found -0.5"),
                                             ("", "expected a finite number, found ''")])
def test_bad_weight_names_file_row_and_column(weighted_files, tmp_path, value, expected):
    root, rows = weighted_files
    bad = [dict(r) for r in rows]
    bad[6]["weight"] = value
    write_rows(tmp_path / "bad.csv", bad)
    cfg = config.build("smoke", None, [f"data.interactions.path={tmp_path / 'bad.csv'}",
                                       f"data.items.path={root / 'items.csv'}",
                                       "data.interactions.sample_weight_column=weight"])
    with pytest.raises(DataError) as err:
        dataset.load(cfg.data)
    assert str(err.value) == f"{tmp_path / 'bad.csv'}, row 7, column 'weight': {expected}"


def test_missing_weight_column_and_bad_settings_name_the_key(weighted_files):
    root, _ = weighted_files
    missing = weighted_cfg(root, "interactions.csv", "data.interactions.sample_weight_column=weight_of_row")
    with pytest.raises(DataError, match="weight_of_row"):
        dataset.load(missing.data)
    with pytest.raises(ConfigError, match="^config key 'data.interactions.sample_weight_column': is not read from "
                                          "streamed shards"):
        weighted_cfg(root, "interactions.csv", "data.interactions.streaming=true", "data.split.method=files",
                     "data.split.validation_path=v.csv", "data.split.test_path=t.csv", "eval.exclude_seen=false")
    with pytest.raises(ConfigError, match="^config key 'data.interactions.sample_weight_column': must name"):
        weighted_cfg(root, "interactions.csv", "data.interactions.sample_weight_column=")


def test_model_loss_is_linear_in_the_weights(weighted_files):
    """Through the model's wiring: loss(w) = sum_i w_i * loss(e_i) (e_i: only example i weighted)."""
    from tfrec.models import build_model

    root, _ = weighted_files
    cfg = weighted_cfg(root)
    data = dataset.load(cfg.data)
    feats = pipeline.training_features(data.train.take(range(4)), data.catalog, data.item_probability())
    batch = {k: tf.constant(v.astype(str).tolist()) if v.dtype == object else tf.constant(v) for k, v in feats.items()}
    model = build_model(cfg, data.catalog)

    def loss(weights):
        return float(model.compute_loss(dict(batch, sample_weight=tf.constant(weights, tf.float32))))

    each = [loss(np.eye(4, dtype=np.float32)[i]) for i in range(4)]
    assert min(each) > 0
    weights = feats["sample_weight"]
    assert loss(weights) == pytest.approx(float(np.dot(weights, each)), rel=1e-5)
    assert loss(np.zeros(4, np.float32)) == 0.0
