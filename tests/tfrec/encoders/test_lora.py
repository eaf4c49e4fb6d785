"""LoRA adapters (``model.query_encoder.lora_rank``): start at the pretrained encoder, train only adapters, merge."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec.encoders.lora import LoRADense, adapters_merged, merge_adapters
from tfrec.encoders.text import BertTextEncoder

TEXTS = tf.constant(["rocket star", "quiet jazz evening", "a"])


def adapters_of(layer: tf.keras.layers.Layer) -> list[LoRADense]:
    return [sub for sub in layer._flatten_layers(include_self=True, recursive=True) if isinstance(sub, LoRADense)]


def _encoder(lora_rank: int) -> BertTextEncoder:
    return BertTextEncoder("random://tiny", max_length=16, pooling="mean", trainable_layers=0, seed=5,
                           lora_rank=lora_rank)


def test_adapters_start_at_the_pretrained_encoder_and_only_they_train():
    lora = _encoder(4)
    start = lora(TEXTS).numpy()
    adapters = adapters_of(lora)
    assert all(not np.any(a.lora_b.numpy()) for a in adapters)  # B = 0: the pretrained encoder's function
    assert len(adapters) == 3 * lora.num_layers and all(isinstance(a, LoRADense) for a in adapters)
    trainable = lora.trainable_variables
    assert {v.name.split("/")[-1].split(":")[0] for v in trainable} == {"lora_a", "lora_b"}
    assert len(trainable) == 2 * len(adapters) and not lora.frozen
    assert sum(int(np.prod(v.shape)) for v in trainable) == lora.num_layers * 3 * (32 * 4 + 4 * 32)

    frozen_before = [v.numpy() for v in lora.non_trainable_variables]
    opt = tf.keras.optimizers.Adam(0.05)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(lora(TEXTS, training=False) - 1.0))
        opt.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(frozen_before, lora.non_trainable_variables))
    trained = lora(TEXTS).numpy()
    assert not np.allclose(trained, start, atol=1e-4)  # the adapters learned

    assert merge_adapters(lora) == len(adapters)
    assert not adapters_of(lora) and not [v for v in lora.variables if "lora" in v.name]  # plain BERT again
    np.testing.assert_allclose(lora(TEXTS).numpy(), trained, atol=1e-5)  # the same function


def test_adapters_merged_lends_plain_bert_and_gives_the_adapters_back():
    lora = _encoder(2)
    lora(TEXTS)  # builds the adapters
    adapters = adapters_of(lora)
    for a in adapters:  # a non-zero update, so merged and unmerged kernels differ
        a.lora_b.assign(tf.fill(a.lora_b.shape, 0.1))
    want = lora(TEXTS).numpy()
    kernels = [a.base.kernel.numpy() for a in adapters]
    with adapters_merged(lora) as merged:
        assert merged == len(adapters) and not adapters_of(lora)
        np.testing.assert_allclose(lora(TEXTS).numpy(), want, atol=1e-5)
    assert adapters_of(lora) == adapters and not any(a.merged for a in adapters)
    assert all(np.array_equal(k, a.base.kernel.numpy()) for k, a in zip(kernels, adapters))  # exactly as before
    assert {v.name.split("/")[-1].split(":")[0] for v in lora.trainable_variables} == {"lora_a", "lora_b"}
    np.testing.assert_allclose(lora(TEXTS).numpy(), want, atol=1e-6)
    with adapters_merged(_encoder(0)) as merged:
        assert merged == 0


def test_config_refuses_lora_with_trainable_layers(smoke_cfg):
    from tfrec.errors import ConfigError

    with pytest.raises(ConfigError, match="lora_rank.*trainable_layers to 0"):
        smoke_cfg("model.query_encoder.lora_rank=4")  # the smoke preset fine-tunes both layers


def test_trainer_with_lora_exports_merged_weights(tmp_path):
    from trainer import task

    job = tmp_path / "job"
    assert task.main(["--preset", "smoke", "--job-dir", str(job), "--set", "model.query_encoder.trainable_layers=0",
                      "--set", "model.query_encoder.lora_rank=2", "--set", "train.encoder_learning_rate=0.01",
                      "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
                      "--set", "eval.baselines=false"]) == 0
    export = job / "export" / "smoke" / "1"
    loaded = tf.saved_model.load(str(export))
    # Checkpoint keys are object paths ("variables/5"); the restored variables keep their layer names.
    assert not [v.name for v in loaded.query_tower.variables if "lora" in v.name]  # merged: plain BERT served
    emb = loaded.signatures["embed_query"](query_text=tf.constant(["rocket star"]))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # The standalone export reloads the run with adapters (from the checkpoint) and must merge them too.
    from serving import export as export_cli

    assert export_cli.main(["--job-dir", str(job), "--index", "brute_force"]) == 0
    again = job / "export" / "smoke" / "2"
    reloaded = tf.saved_model.load(str(again))
    assert not [v.name for v in reloaded.query_tower.variables if "lora" in v.name]
    assert len(reloaded.query_tower.variables) == len(loaded.query_tower.variables)
    emb2 = reloaded.signatures["embed_query"](query_text=tf.constant(["rocket star"]))["embedding"].numpy()
    np.testing.assert_allclose(emb2, emb, atol=1e-5)  # the same trained function as the trainer's export
