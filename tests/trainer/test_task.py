"""The training entry point, end to end on the smoke preset (tiny random BERT, synthetic data)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from trainer import task


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    job = tmp_path_factory.mktemp("smoke")
    assert task.main(["--preset", "smoke", "--job-dir", str(job)]) == 0
    return job


def test_artefacts(smoke_run):
    job = smoke_run
    assert (job / "params.yaml").is_file()
    report = json.loads((job / "eval.json").read_text())
    assert set(report["model"]) >= {"recall@10", "ndcg@10", "mrr"}
    assert set(report["baselines"]) == {"popularity", "bm25", "content", "id_two_tower"}
    assert report["data"]["counts"]["test"] == 60
    events = list((job / "tensorboard").rglob("events.out.tfevents.*"))
    assert any("train" in str(e) for e in events) and any("hparams" in str(e) for e in events)
    assert (job / "tensorboard" / "projector" / "projector_config.pbtxt").is_file()
    assert len((job / "tensorboard" / "projector" / "metadata.tsv").read_text().splitlines()) == 1 + 160  # header
    assert (job / "checkpoints" / "state.json").is_file()
    assert (job / "export" / "models.config").is_file()
    assert (job / "export" / "smoke" / "1" / "saved_model.pb").is_file()


def test_model_beats_every_baseline_on_text_only_queries(smoke_run):
    """Each smoke query names two words of its item's title, half of them by a synonym no title uses: the text
    two-tower must learn both, and so rank the target higher than popularity, the user-id model (which knows
    the user's favourite genres), BM25 over the item texts (which reads the exact words only) and the untrained
    encoder (content)."""
    report = json.loads((smoke_run / "eval.json").read_text())
    assert set(report["baselines"]) == {"popularity", "bm25", "content", "id_two_tower"}
    for name, baseline in report["baselines"].items():
        for metric in ("recall@10", "ndcg@10", "mrr"):
            assert report["model"][metric] > baseline[metric], (name, metric, report["model"], baseline)


def test_tensorboard_has_validation_loss_recall_and_one_learning_rate_curve(smoke_run):
    def tags(folder):
        found = set()
        for path in (smoke_run / "tensorboard" / folder).rglob("events.out.tfevents.*"):
            for record in tf.data.TFRecordDataset(str(path)):
                found.update(v.tag for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value)
        return found

    train = tags("train")
    # The smoke preset fine-tunes the encoder: its rate is a second optimiser's, not a copy of the heads' rate.
    assert {"epoch_loss", "batch_loss", "batch_learning_rate", "batch_encoder_learning_rate"} <= train
    assert not {"epoch_learning_rate", "learning_rate", "epoch_encoder_learning_rate"} & train  # one curve each
    assert {"epoch_loss", "epoch_recall@10", "epoch_ndcg@10", "epoch_mrr"} <= tags("validation")


def test_exported_savedmodel_takes_raw_text(smoke_run):
    loaded = tf.saved_model.load(str(smoke_run / "export" / "smoke" / "1"))
    assert {"serving_default", "retrieve", "embed_query", "embed_item"} <= set(loaded.signatures)
    # Python's signature wrapper wants every input; TF Serving applies the
    # SignatureDef's default (no exclusions) when a request leaves it out.
    no_exclusions = tf.zeros([2, 0], tf.string)
    out = loaded.signatures["serving_default"](query_text=tf.constant(["looking for rocket star", "jazz"]),
                                               exclude_item_ids=no_exclusions)
    assert out["item_ids"].shape == (2, 10) and out["scores"].dtype == tf.float32
    scores = out["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    first = out["item_ids"].numpy()[0, :3].astype(str).tolist()
    excluded = loaded.signatures["serving_default"](query_text=tf.constant(["looking for rocket star"]),
                                                   exclude_item_ids=tf.constant([first + [""]]))
    kept = excluded["item_ids"].numpy()[0].astype(str).tolist()
    assert not set(first) & set(kept) and len(kept) == 10
    emb = loaded.signatures["embed_query"](query_text=tf.constant(["a"]))["embedding"]
    assert emb.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=1), 1.0, atol=1e-5)


def test_signature_default_for_exclusions(smoke_run):
    from tensorflow.python.saved_model import loader_impl

    saved = loader_impl.parse_saved_model(str(smoke_run / "export" / "smoke" / "1"))
    signature = saved.meta_graphs[0].signature_def["serving_default"]
    assert set(signature.inputs) == {"query_text", "exclude_item_ids"}
    assert "exclude_item_ids" in signature.defaults
    assert set(signature.outputs) == {"item_ids", "scores"}


def test_resume_continues_from_the_last_epoch(tmp_path, capsys):
    job = str(tmp_path / "job")
    quick = ["--preset", "smoke", "--job-dir", job, "--set", "eval.baselines=false", "--set", "export.enabled=false"]
    assert task.main(quick + ["--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert task.main(quick + ["--set", "train.epochs=2"]) == 0
    assert "resume: restored epoch 1" in capsys.readouterr().out
    state = json.loads((tmp_path / "job" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1  # 0-based: the second epoch ran, the first was not repeated
    assert task.main(quick + ["--set", "train.epochs=2"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_job_dir_of_another_config_is_refused(tmp_path, capsys):
    job = str(tmp_path / "job")
    base = ["--preset", "smoke", "--job-dir", job, "--set", "eval.baselines=false", "--set", "export.enabled=false",
            "--set", "train.epochs=1"]
    assert task.main(base) == 0
    assert task.main(base + ["--set", "model.embedding_dim=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config (model.embedding_dim)" in err[0]


def test_cached_and_uncached_loss_match(smoke_cfg):
    from tfrec.data import dataset, pipeline
    from tfrec.models import build_model

    cfg = smoke_cfg("model.query_encoder.trainable_layers=0")
    data = dataset.load(cfg.data, base_dir=None)
    model = build_model(cfg, data.catalog)
    probability = data.item_probability()
    sample = data.train.take(range(32))
    encoder = model.query_tower.encoder
    qc = pipeline.TextCache(sample.query_text, encoder.encode_texts)
    ic = pipeline.TextCache(data.catalog.texts, encoder.encode_texts)
    raw = pipeline.training_features(sample, data.catalog, probability)
    cached = pipeline.training_features(sample, data.catalog, probability, qc, ic)
    assert "query_text" in raw and "query_text_encoding" in cached and "item_text_encoding" in cached
    loss_raw = model.compute_loss(next(iter(pipeline.make_dataset(raw, 32))))
    loss_cached = model.compute_loss(next(iter(pipeline.make_dataset(cached, 32))))
    np.testing.assert_allclose(float(loss_raw), float(loss_cached), rtol=1e-5)


def test_frozen_encoder_has_no_dropout_in_training(smoke_cfg):
    """Cached encodings are computed without dropout, so the uncached path must match them in training."""
    from tfrec.data import dataset, pipeline
    from tfrec.models import build_model

    cfg = smoke_cfg("model.query_encoder.trainable_layers=0")
    data = dataset.load(cfg.data, base_dir=None)
    model = build_model(cfg, data.catalog)
    texts = tf.constant(data.train.query_text[:8])
    a = model.query_tower({"query_text": texts}, training=True)
    b = model.query_tower({"query_text": texts}, training=True)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
