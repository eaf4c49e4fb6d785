"""What a run adds to TensorBoard after training: the HParams row and the item embeddings in the Projector.

``tensorboard/hparams/`` holds the settings a person compares runs by
(:func:`compared_settings`) and the final test metrics; ``tensorboard/projector/``
holds the item embeddings [num_items, dim] as a checkpoint, their metadata
(id, title, categorical values) and the projector's config. TensorBoard lists
a folder as a run only when it holds an event file, so the projector folder gets
one too (without it the Projector plugin stays inactive: "No checkpoint was found").
The per-step and per-epoch scalars are Keras' TensorBoard callback's
(:class:`tfrec.training.TensorBoard`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hp

from tfrec import config as config_lib
from tfrec import fileio, training

# Always in the HParams table: what the model is and how it trains.
COMPARED_SECTIONS = ("model.", "retrieval.")
COMPARED_KEYS = ("name", "ranking.weight", "ranking.head", "ranking.objective", "train.batch_size", "train.epochs",
                 "train.learning_rate", "train.encoder_learning_rate", "train.weight_decay", "train.warmup_fraction",
                 "train.early_stopping_patience", "train.max_steps_per_epoch", "train.seed",
                 "train.mixed_precision")
# Never in it: where the data is and what its columns are called, which say nothing about the model.
NOT_COMPARED_SUFFIXES = ("path", "_column", "_columns", ".format")
NOT_COMPARED_KEYS = ("export.model_name",)


def compared_settings(cfg: config_lib.Config) -> dict:
    """The HParams of a run: ``model.*``, ``retrieval.*``, the ranking head's weight and kind, the ``train.*``
    hyperparameters, and any other setting whose value differs from the built-in default (what the preset,
    the YAML or ``--set`` changed), except file paths, column names and formats: ``{"train.epochs": 8, ...}``."""
    flat = training.flatten(config_lib.to_dict(cfg))
    default = training.flatten(config_lib.to_dict(config_lib.Config()))

    def compared(key: str) -> bool:
        if key in NOT_COMPARED_KEYS or key.endswith(NOT_COMPARED_SUFFIXES):
            return False
        return key.startswith(COMPARED_SECTIONS) or key in COMPARED_KEYS or flat[key] != default.get(key)

    return {k: v for k, v in flat.items() if compared(k)}


def write_hparams(log_dir: str, hparams: dict, metrics: dict[str, float]) -> None:
    """Records the run's hyperparameters (``{"train.epochs": 8, ...}``; a value other than a number, string or
    bool is shown as its ``str``) and final metrics for TensorBoard's HParams tab."""
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hp.hparams(flat)
        for key, value in metrics.items():
            tf.summary.scalar(key, value, step=0)


def write_projector(log_dir: str, embeddings: np.ndarray, catalog) -> None:
    """Item embeddings [num_items, dim] in TensorBoard's projector, with each item's id, title and
    categorical values (``catalog``: a :class:`tfrec.data.dataset.Catalog`) as metadata columns."""
    folder = os.path.join(log_dir, "projector")
    tf.io.gfile.makedirs(folder)
    columns = {"item_id": catalog.item_ids, "title": catalog.titles, **catalog.categorical}

    def cell(value) -> str:
        return str(value).replace("\t", " ").replace("\n", " ")

    # The projector reads a header row only when there are two or more columns (always the case here).
    rows = ["\t".join(columns)] + ["\t".join(cell(col[i]) for col in columns.values())
                                   for i in range(len(catalog.item_ids))]
    fileio.write_text(os.path.join(folder, "metadata.tsv"), "\n".join(rows) + "\n")
    variable = tf.Variable(embeddings, name="item_embeddings")
    tf.train.Checkpoint(embedding=variable).save(os.path.join(folder, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    emb.metadata_path = "metadata.tsv"
    fileio.remove(os.path.join(folder, "projector_config.pbtxt"))  # ram:// appends to a file opened with "w"
    projector.visualize_embeddings(folder, config)
    writer = tf.summary.create_file_writer(folder)  # an event file: what makes TensorBoard list the folder as a run
    writer.flush()
    writer.close()
