"""BERT text encoder: raw strings in, pooled vectors out, tokenised in-graph.

The tokenizer is tensorflow-text's ``FastBertTokenizer`` built from the
checkpoint's ``vocab.txt`` (lower-casing per its ``tokenizer_config.json``), so
a SavedModel that contains this layer takes raw text and runs on stock
TensorFlow Serving. The encoder is Hugging Face's ``TFBertModel`` loaded from a
local checkpoint folder; ``random://tiny`` builds a 2-layer, hidden-32 BERT
from config instead (tests, the smoke preset).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
from tqdm.auto import tqdm

from tfrec.data.readers import resolve_path
from tfrec.data.synthetic import vocabulary
from tfrec.encoders.lora import add_adapters
from tfrec.errors import UserError
from tfrec.progress import Progress

log = logging.getLogger("tfrec")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def resolve_checkpoint(checkpoint: str) -> str:
    """``pkg://package/sub/folder`` or a plain folder -> an existing folder path."""
    if checkpoint.startswith("pkg://"):
        try:
            checkpoint = resolve_path(checkpoint)[0]
        except UserError as e:
            raise UserError(f"model.query_encoder.checkpoint: {e}") from None
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise UserError(f"{checkpoint}: checkpoint folder not found (model.query_encoder.checkpoint)")
    for name in ("config.json", "vocab.txt"):
        if not (folder / name).is_file():
            raise UserError(f"{checkpoint}: not a BERT checkpoint folder: '{name}' is missing")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:  # AttributeError: not an object
        raise UserError(f"{folder / 'config.json'}: expected a JSON object ({e})") from None
    if model_type != "bert":
        raise UserError(f"{folder / 'config.json'}: model_type is '{model_type}', expected 'bert'")
    if not any((folder / w).is_file() for w in ("model.safetensors", "tf_model.h5", "pytorch_model.bin")):
        raise UserError(f"{checkpoint}: no weights (model.safetensors or tf_model.h5) in the checkpoint folder")
    return str(folder)


def tiny_vocabulary() -> list[str]:
    """The random tiny BERT's vocabulary: special tokens, synthetic words, characters."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-&/|")
    tokens = SPECIAL_TOKENS + vocabulary() + chars + ["##" + c for c in chars if c.isalnum()]
    return list(dict.fromkeys(tokens))


def _draw_weights(bert_model, seed: int) -> None:
    """Builds a new BERT and draws its random weights from ``seed`` alone.

    BERT's own initialiser (a truncated normal of stddev ``initializer_range``)
    through stateless ops, one seed per variable: the same seed gives the same
    weights whatever the process drew before, and no global seed is set. Biases
    and LayerNorm keep their constant initial values.
    """
    bert_model.build_in_name_scope()
    stddev = bert_model.config.initializer_range
    for i, variable in enumerate(bert_model.weights):
        if "bias" not in variable.name and "LayerNorm" not in variable.name:
            variable.assign(tf.random.stateless_truncated_normal(variable.shape, seed=[seed, i], stddev=stddev,
                                                                 dtype=variable.dtype))


def length_batches(lengths: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Token counts int [n] -> [(row numbers int [<= batch_size], width)], longest texts first.

    Every batch holds texts of one exact token count, its width; a group larger
    than ``batch_size`` is cut in order of row number.
    """
    batches = []
    for width in np.unique(lengths)[::-1]:
        rows = np.flatnonzero(lengths == width)
        batches += [(rows[s:s + batch_size], int(width)) for s in range(0, len(rows), batch_size)]
    return batches


class BertTextEncoder(tf.keras.layers.Layer):
    """Strings [batch] -> float32 [batch, hidden_size] (masked mean or CLS pooling).

    Args:
      checkpoint: a Hugging Face BERT folder (config.json, vocab.txt, weights),
        ``pkg://package/folder``, or ``random://tiny``.
      max_length: tokens per text including [CLS] and [SEP]; longer texts are
        truncated, shorter ones padded (static shapes).
      pooling: ``mean`` (masked mean of the last hidden state) or ``cls``.
      trainable_layers: how many of the top transformer layers train; 0 freezes
        the encoder whole.
      train_embeddings: with ``trainable_layers`` > 0, the embedding layer (word,
        position, type) trains too.
      seed: initialisation seed for ``random://tiny`` (its weights depend on it alone).
      lora_rank: > 0 adds rank-r LoRA adapters to every layer's attention
        projections and trains only those (:mod:`tfrec.encoders.lora`;
        ``trainable_layers`` must then be 0).
    """

    def __init__(self, checkpoint: str, max_length: int = 32, pooling: str = "mean", trainable_layers: int = 0,
                 seed: int = 0, lora_rank: int = 0, train_embeddings: bool = False, **kwargs):
        super().__init__(**kwargs)
        from transformers import BertConfig, TFBertModel  # heavy: transformers loads only when an encoder is built
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "some weights of the checkpoint were not used" (the pooler)
        self.checkpoint, self.max_length, self.pooling = checkpoint, max_length, pooling
        self.trainable_layers, self.seed = trainable_layers, seed
        self.lora_rank, self.train_embeddings = lora_rank, train_embeddings
        if checkpoint == "random://tiny":
            vocab, lower = tiny_vocabulary(), True
            config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=max(64, max_length))
            self.bert = TFBertModel(config, name="bert_model")
            _draw_weights(self.bert, seed)
        elif checkpoint.startswith("random://"):
            raise UserError(f"model.query_encoder.checkpoint: unknown '{checkpoint}', expected random://tiny")
        else:
            folder = resolve_checkpoint(checkpoint)
            try:
                vocab = Path(folder, "vocab.txt").read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise UserError(f"{folder}/vocab.txt: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            lower = True
            tok_cfg = Path(folder, "tokenizer_config.json")
            if tok_cfg.is_file():
                try:
                    lower = bool(json.loads(tok_cfg.read_text()).get("do_lower_case", True))
                except (ValueError, AttributeError) as e:  # JSONDecodeError, UnicodeDecodeError, not an object
                    raise UserError(f"{tok_cfg}: expected a JSON object ({str(e).splitlines()[0]})") from None
            try:
                self.bert = TFBertModel.from_pretrained(folder, name="bert_model")
            except Exception as e:  # noqa: BLE001 - any failure to read the user's weights (safetensors, h5py, ...)
                reason = (str(e).splitlines() or [type(e).__name__])[0]
                raise UserError(f"{folder}: could not load the BERT weights ({reason}); expected a Hugging Face "
                                "BERT checkpoint with model.safetensors or tf_model.h5") from e
        if max_length > self.bert.config.max_position_embeddings:
            raise UserError(f"model.query_encoder.max_length: {max_length} exceeds the checkpoint's "
                            f"max_position_embeddings={self.bert.config.max_position_embeddings}")
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise UserError(f"{checkpoint}: vocab.txt lacks {', '.join(missing)}")
        self.vocab_size = len(vocab)
        self.cls_id, self.sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
        self.tokenizer = tf_text.FastBertTokenizer(vocab=vocab, token_out_type=tf.int32, unknown_token="[UNK]",
                                                   lower_case_nfd_strip_accents=lower)
        self.hidden_size = self.bert.config.hidden_size
        self.num_layers = self.bert.config.num_hidden_layers
        self._set_trainable_layers(trainable_layers)
        if lora_rank:
            add_adapters(self.bert, lora_rank)
            self.frozen = False

    def _set_trainable_layers(self, n: int) -> None:
        main = self.bert.bert
        main.embeddings.trainable = self.train_embeddings and n > 0
        if main.pooler is not None:
            main.pooler.trainable = False  # never used: pooling happens here
        for i, layer in enumerate(main.encoder.layer):
            layer.trainable = i >= self.num_layers - n
        self.frozen = n == 0

    def tokenize(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Strings [batch] -> (input_ids int32 [batch, max_length], attention_mask int32 [batch, max_length])."""
        texts = tf.reshape(tf.convert_to_tensor(texts, tf.string), [-1])
        pieces = self.tokenizer.tokenize(texts)[:, : self.max_length - 2]
        ids, _ = tf_text.combine_segments([pieces], start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
        ids, mask = tf_text.pad_model_inputs(ids, max_seq_length=self.max_length)
        return tf.cast(ids, tf.int32), tf.cast(mask, tf.int32)

    def encode_tokens(self, input_ids: tf.Tensor, attention_mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """(int32 [batch, length], int32 [batch, length]) -> float32 [batch, hidden_size]."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, training=training).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tf.cast(attention_mask, hidden.dtype)[:, :, None]
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def call(self, texts, training: bool = False) -> tf.Tensor:
        """Strings [batch] -> float32 [batch, hidden_size].

        ``texts`` may instead be ``{"input_ids": ..., "attention_mask": ...}``,
        int32 [batch, length] from :meth:`tokenize` run earlier (in the host's
        ``tf.data`` pipeline for TPUs and XLA): the same result, no string ops.
        """
        if isinstance(texts, dict):
            return self.encode_tokens(texts["input_ids"], texts["attention_mask"], training=training)
        ids, mask = self.tokenize(texts)
        return self.encode_tokens(ids, mask, training=training)

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        """Encodes many texts (inference, no dropout): float32 [len(texts), hidden_size].

        Texts are grouped by their exact token count and every batch is
        ``batch_size`` rows of one width, that count (:func:`length_batches`;
        short groups repeat their rows to fill the batch), all through one
        shape-generic graph. A text's encoding then depends on its own tokens,
        not on the texts it shares a batch with: the same text gives the same
        floats in any catalog (checked bit for bit by the tests and
        ``bench/encode.py`` at 16 rows and more; 4-row batches were not). The
        result equals :meth:`call` within float tolerance, several times faster
        (no padded positions).
        """
        if not texts:
            return np.zeros([0, self.hidden_size], np.float32)
        ids, mask = [], []
        for start in range(0, len(texts), 4096):
            i, m = self.tokenize(tf.constant(texts[start:start + 4096]))
            ids.append(i.numpy())
            mask.append(m.numpy())
        ids, mask = np.concatenate(ids), np.concatenate(mask)
        out = np.zeros([len(texts), self.hidden_size], np.float32)
        # One trace for every width: a graph traced for one exact shape would compute that width's batches
        # with other kernels (other float roundings) than the shape-generic graph computes the rest.
        spec = tf.TensorSpec([None, None], tf.int32)
        encode = tf.function(lambda i, m: self.encode_tokens(i, m, training=False), input_signature=[spec, spec])
        bar = tqdm(total=len(texts), desc=progress, unit="text", mininterval=2.0, leave=False,
                   disable=True if progress is None or not log.isEnabledFor(logging.INFO) else None)  # None: a TTY only
        lines = None if progress is None else Progress(progress, len(texts), "texts")  # the log: every 30 s
        done = 0
        for rows, width in length_batches(mask.sum(axis=1), batch_size):
            full = np.resize(rows, batch_size)  # the batch's rows repeated up to batch_size
            out[rows] = encode(tf.constant(ids[full, :width]), tf.constant(mask[full, :width])).numpy()[:len(rows)]
            done += len(rows)
            bar.update(len(rows))
            if lines is not None:
                lines.update(done)
        bar.close()
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "checkpoint": self.checkpoint, "max_length": self.max_length,
                "pooling": self.pooling, "trainable_layers": self.trainable_layers, "seed": self.seed,
                "lora_rank": self.lora_rank, "train_embeddings": self.train_embeddings}


tf.keras.utils.register_keras_serializable("tfrec")(BertTextEncoder)
