"""A finished run's model, rebuilt from its job dir: ``params.yaml`` and ``checkpoints/best``
(with the towers' gates closed where ``eval.json`` says the run serves their untrained start).

    cfg, model, data = tfrec.load_trained("runs/movielens")

The one place that does it; ``python -m serving.export``, ``python -m serving.reindex``
and the benchmarks all call :func:`load_trained`. It goes through the training stages
themselves (:func:`tfrec.run.load_data`, with the cold-item hold-out, and
:func:`tfrec.run.build_model`, under ``train.mixed_precision``), so the rebuilt model is
the one ``fit`` trained, variable for variable.
"""

from __future__ import annotations

import os

import numpy as np

from tfrec import config as config_lib
from tfrec import fileio, hybrid, text_skip
from tfrec.config import Config
from tfrec.data import pipeline
from tfrec.data.dataset import RetrievalData
from tfrec.errors import UserError
from tfrec.models import TwoTowerModel
from tfrec.run import build_model, load_data


def read_params(job_dir: str | os.PathLike) -> Config:
    """The validated config of the run in ``job_dir`` (its ``params.yaml``); UserError when there is none."""
    params = fileio.join(fileio.location(job_dir), "params.yaml")
    if not fileio.isfile(params):
        raise UserError(f"{job_dir}: no params.yaml; not a tfrec job dir (train first with python -m trainer.task)")
    return config_lib.validate(config_lib.from_dict(config_lib.read_yaml(params)))


def set_catalog_shapes(cfg: Config, data: RetrievalData, model: TwoTowerModel) -> None:
    """Gives ``model`` a catalog table of the shapes training used (:func:`tfrec.run.build_features`).

    The table is part of the checkpoint, so its values come back with the weights; only the shapes
    matter here: ``item_text_encoding`` float32 [num_items, hidden] where a frozen encoder's outputs
    were cached, else ``item_text`` string [num_items], and ``item_<column>`` per categorical column.
    """
    table = pipeline.item_features(data.catalog, np.arange(len(data.catalog)))
    encoder = model.item_tower.text_encoder
    if encoder is not None and encoder.frozen and cfg.train.cache_frozen_encoders:
        del table["item_text"]
        table["item_text_encoding"] = np.zeros([len(data.catalog), encoder.hidden_size], np.float32)
    model.set_catalog(table)


def load_trained(job_dir: str | os.PathLike) -> tuple[Config, TwoTowerModel, RetrievalData]:
    """Rebuilds the run in ``job_dir`` (a folder or a ``tf.io.gfile`` URL) with its best epoch's weights.

    Returns:
      ``(cfg, model, data)``: the run's resolved config, the trained
      :class:`tfrec.models.TwoTowerModel` and its :class:`tfrec.data.dataset.RetrievalData`
      (the same splits and catalog as at training). UserError when ``job_dir`` holds no finished run.
    """
    job = fileio.location(job_dir)
    cfg = read_params(job)
    weights = fileio.join(job, "checkpoints", "best", "weights")
    if not fileio.isfile(f"{weights}.index"):
        raise UserError(f"{job}: no trained weights at {weights}.index (the run has not finished an epoch)")
    data = load_data(cfg, job)
    model = build_model(cfg, data)
    set_catalog_shapes(cfg, data, model)
    sample = next(iter(pipeline.make_dataset(pipeline.training_features(
        data.validation.take(range(2)), data.catalog, data.item_probability(),
        query_text=model.query_tower.encoder is not None), 2)))
    model.query_tower(sample), model.item_tower(sample)  # creates the variables the weights are restored into
    model.load_weights(str(weights)).expect_partial()
    if hybrid.serves_start(job):  # validation chose the untrained start over the trained towers: serve that
        text_skip.close_gates(model)
    return cfg, model, data
