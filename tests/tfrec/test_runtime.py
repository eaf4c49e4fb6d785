"""tf.distribute on CPU: two logical CPU devices stand in for two GPUs.

The devices must be configured before TensorFlow initialises them, so the
mirrored checks run in one subprocess (this file run as a script, ``--child``)
that reports JSON; the single-device checks (host tokenisation, mixed
precision, XLA) run in the test process.

Equivalences checked (same weights, same examples, inference-mode forward so
BERT dropout does not differ):

* ``mirrored`` without cross-replica negatives: each replica's in-batch
  softmax sees its own half, and the loss is averaged over the global batch,
  so 2 replicas x 16 give the mean of the single-replica losses of the two
  halves (and the summed gradients their mean).
* ``retrieval.cross_replica_negatives``: 2 replicas x 16 give the loss and
  gradients of 1 replica at 32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":  # the --child process: the repo on sys.path, tfrec before tensorflow
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import tfrec  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
GLOBAL_BATCH = 32


def _tensors(features: dict, start: int, stop: int) -> dict:
    return {k: (tf.constant(v[start:stop].astype(str).tolist()) if v.dtype == object else tf.constant(v[start:stop]))
            for k, v in features.items() if k != "label"}


def _smoke_batches(cfg, base_dir: str):
    """The first GLOBAL_BATCH training examples, unshuffled, as (catalog, full, first half, second half)."""
    from tfrec.data import dataset, pipeline

    data = dataset.load(cfg.data, base_dir=base_dir)
    feats = pipeline.training_features(data.train, data.catalog, data.item_probability())
    half = GLOBAL_BATCH // 2
    return data.catalog, _tensors(feats, 0, GLOBAL_BATCH), _tensors(feats, 0, half), _tensors(feats, half, GLOBAL_BATCH)


def _loss_and_gradients(model, features):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(features, training=False)
    grads = tape.gradient(loss, model.trainable_variables)
    return loss, [tf.convert_to_tensor(g) for g in grads]


def _child(out_path: str, job_dir: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfrec import config
    from tfrec.models import build_model
    from trainer import task

    report = {}
    cfg = config.build("smoke", None, [])
    catalog, full, first, second = _smoke_batches(cfg, job_dir)
    tf.keras.utils.set_random_seed(1)
    single = build_model(cfg, catalog)
    single.query_tower(full), single.item_tower(full)
    loss_full, grads_full = _loss_and_gradients(single, full)
    loss_a, grads_a = _loss_and_gradients(single, first)
    loss_b, grads_b = _loss_and_gradients(single, second)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build_model(cfg, catalog)
        mirrored.query_tower(full), mirrored.item_tower(full)
    assert [v.shape for v in mirrored.trainable_variables] == [v.shape for v in single.trainable_variables]
    mirrored.set_weights(single.get_weights())
    halves = [first, second]
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: halves[ctx.replica_id_in_sync_group])
    for cross in (False, True):
        mirrored.retrieval.cross_replica_negatives = cross  # read when the step is traced
        step = tf.function(lambda f: _loss_and_gradients(mirrored, f))
        loss, grads = strategy.run(step, args=(per_replica,))
        loss = float(strategy.reduce("SUM", loss, axis=None))
        grads = [strategy.reduce("SUM", g, axis=None).numpy() for g in grads]
        if cross:
            want_loss, want_grads = float(loss_full), [g.numpy() for g in grads_full]
        else:
            want_loss = float(loss_a + loss_b) / 2
            want_grads = [(a.numpy() + b.numpy()) / 2 for a, b in zip(grads_a, grads_b)]
        report["cross" if cross else "local"] = {
            "replicas": strategy.num_replicas_in_sync, "loss": loss, "want_loss": want_loss,
            "loss_full_batch": float(loss_full), "loss_halves": [float(loss_a), float(loss_b)],
            "max_grad_diff": max(float(np.max(np.abs(g - w))) for g, w in zip(grads, want_grads)),
            "max_grad": max(float(np.max(np.abs(w))) for w in want_grads)}

    # The trainer end to end under `mirrored`: 2 replicas share each global batch of 32.
    rc = task.main(["--preset", "smoke", "--job-dir", job_dir, "--set", "runtime.strategy=mirrored",
                    "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2", "--set", "eval.baselines=false",
                    "--set", "retrieval.cross_replica_negatives=true"])
    report["trainer_rc"] = rc
    Path(out_path).write_text(json.dumps(report))


def served_recall_at_10(job: Path) -> tuple[float, int]:
    """recall@10 of the exported SavedModel on the run's test split, and the number of test queries."""
    from tfrec import config
    from tfrec.api import load_export
    from tfrec.data import dataset

    cfg = config.validate(config.from_dict(config.read_yaml(job / "params.yaml")))
    test = dataset.load(cfg.data, base_dir=str(job)).test
    served = load_export(job / "export" / "smoke" / "1")
    out = served.signatures["serving_default"](query_text=tf.constant(test.query_text),
                                               exclude_item_ids=tf.zeros([len(test.query_text), 0], tf.string))
    top = out["item_ids"].numpy()[:, :10].astype(str)
    hits = [target in row for target, row in zip(test.item_id, top)]
    return float(np.mean(hits)), len(hits)


@pytest.fixture(scope="module")
def mirrored_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirrored")
    out, job = folder / "report.json", folder / "job"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(HERE), "--child", str(out), str(job)], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), job, proc.stdout


def test_mirrored_loss_is_the_global_batch_average(mirrored_report):
    report = mirrored_report[0]["local"]
    assert report["replicas"] == 2
    assert report["loss"] == pytest.approx(report["want_loss"], rel=1e-5)
    assert report["max_grad_diff"] <= 1e-5 * max(1.0, report["max_grad"])
    # Per-replica in-batch negatives: not the one-replica loss at 32 (that needs cross-replica negatives).
    assert abs(report["loss"] - report["loss_full_batch"]) > 1e-3


def test_cross_replica_negatives_equal_one_replica_at_the_global_batch(mirrored_report):
    report = mirrored_report[0]["cross"]
    assert report["loss"] == pytest.approx(report["loss_full_batch"], rel=1e-5)
    assert report["max_grad_diff"] <= 1e-5 * max(1.0, report["max_grad"])


def test_mirrored_trains_the_smoke_preset_to_the_end(mirrored_report):
    report, job, stdout = mirrored_report
    assert report["trainer_rc"] == 0
    assert "MirroredStrategy with 2 replica(s)" in stdout
    # The export serves what was evaluated: its top 10 on the test queries hit the held-out item exactly as
    # often as eval.json's recall@10 says (one query of tolerance for a tie at the cut-off).
    recall, num_test = served_recall_at_10(job)
    assert num_test == 60
    assert abs(json.loads((job / "eval.json").read_text())["model"]["recall@10"] - recall) <= 1 / num_test


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"master": ["a:1"], "worker": ["b:1"]}, "task": {"type": "master", "index": 0}}, True),
    ({"cluster": {"master": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
])
def test_is_chief_follows_tf_config(monkeypatch, tf_config, chief):
    from tfrec import runtime

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert runtime.is_chief() is chief


# --- single device: TPU-style host preprocessing, mixed precision, XLA ----------------------------------------
def test_host_token_features_give_the_raw_text_loss(smoke_cfg, tmp_path):
    """TPU path: tokens and id lookups made in tf.data on the host give the same loss as raw strings."""
    from tfrec.models import build_model
    from tfrec.towers import host_features

    cfg = smoke_cfg()
    catalog, full, _, _ = _smoke_batches(cfg, str(tmp_path))
    model = build_model(cfg, catalog)
    raw_loss, raw_grads = _loss_and_gradients(model, full)
    ds = tf.data.Dataset.from_tensor_slices(full).batch(GLOBAL_BATCH, drop_remainder=True)
    ds = ds.map(lambda f: host_features(model.query_tower, model.item_tower, f))
    assert ds.element_spec["query_input_ids"].shape.as_list() == [GLOBAL_BATCH, cfg.model.query_encoder.max_length]
    token = next(iter(ds))
    assert not any(t.dtype == tf.string for t in token.values())  # nothing a TPU cannot take
    assert {"query_input_ids", "query_attention_mask", "item_input_ids", "item_attention_mask"} <= set(token)
    assert token["query_input_ids"].dtype == tf.int32 and token["item_id"].dtype.is_integer
    token_loss, token_grads = _loss_and_gradients(model, token)
    assert float(token_loss) == pytest.approx(float(raw_loss), rel=1e-6)
    for a, b in zip(raw_grads, token_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_mixed_float16_loss_scaling_trains_both_optimizers(smoke_cfg, tmp_path):
    """Each LossScaleOptimizer scales and unscales its own gradients; the loss stays float32."""
    from tfrec import runtime, training
    from tfrec.models import build_model

    cfg = smoke_cfg()
    catalog, full, _, _ = _smoke_batches(cfg, str(tmp_path))
    tf.keras.utils.set_random_seed(cfg.train.seed)  # the weights, hence whether a step overflows, fixed
    runtime.set_precision("mixed_float16")
    try:
        model = build_model(cfg, catalog)
    finally:
        runtime.set_precision("none")
    assert model.query_tower.head.layers[0].compute_dtype == "float16"
    assert model.retrieval.compute_dtype == "float32"
    model.compile(optimizer=tf.keras.mixed_precision.LossScaleOptimizer(
        training.make_optimizer(0.01, 10, 0.0, 0.0, "head")))
    model.encoder_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(
        training.make_optimizer(0.001, 10, 0.0, 0.0, "encoder"))
    assert model.query_tower(full).dtype == tf.float32 and model.item_tower(full).dtype == tf.float32
    before = {v.name: v.numpy() for v in model.trainable_variables}
    # Dynamic loss scaling skips a step whose scaled gradients overflow (and halves the scale): several steps.
    history = model.fit(tf.data.Dataset.from_tensors(full).repeat(6), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = {v.name for v in model.trainable_variables if not np.array_equal(before[v.name], v.numpy())}
    encoder_vars = {v.name for v in model.query_tower.encoder.trainable_variables}
    assert changed & encoder_vars and changed - encoder_vars  # both optimizers stepped
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_mixed_bfloat16_with_xla_trains_and_exports_float32(tmp_path):
    from trainer import task

    job = tmp_path / "job"
    assert task.main(["--preset", "smoke", "--job-dir", str(job), "--set", "train.mixed_precision=mixed_bfloat16",
                      "--set", "train.jit_compile=true", "--set", "train.epochs=1",
                      "--set", "train.max_steps_per_epoch=2", "--set", "eval.baselines=false"]) == 0
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # the policy does not leak out of train()
    assert np.isfinite(json.loads((job / "eval.json").read_text())["model"]["mrr"])
    loaded = tf.saved_model.load(str(job / "export" / "smoke" / "1"))
    out = loaded.signatures["serving_default"](query_text=tf.constant(["rocket star"]),
                                               exclude_item_ids=tf.zeros([1, 0], tf.string))
    assert out["scores"].dtype == tf.float32
    embedding = loaded.signatures["embed_query"](query_text=tf.constant(["jazz"]))["embedding"]
    assert embedding.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(embedding.numpy(), axis=1), 1.0, atol=1e-3)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(sys.argv[2], sys.argv[3])


def test_malformed_tf_config_is_one_line(tmp_path, monkeypatch, capsys):
    from trainer import task

    monkeypatch.setenv("TF_CONFIG", "{cluster: oops")
    assert task.main(["--preset", "smoke", "--job-dir", str(tmp_path / "j")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TF_CONFIG: not valid JSON")
