"""Test set-up: the repo on sys.path and tfrec imported before tensorflow."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tfrec  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before any tensorflow import)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def tfrec_log_reaches_caplog():
    """A test that ran a CLI in-process leaves the ``tfrec`` logger unpropagated (tfrec.cli.setup_logging
    stops duplicate lines that way); later tests' ``caplog`` listens on the root logger, so each test starts
    with propagation back on."""
    import logging

    logging.getLogger("tfrec").propagate = True
    yield


@pytest.fixture(scope="session")
def smoke_cfg():
    """A fresh smoke config per call (dataclasses are mutable)."""
    from tfrec import config

    return lambda *sets: config.build("smoke", None, list(sets))


@pytest.fixture(scope="session")
def tiny_encoder():
    from tfrec.encoders.text import BertTextEncoder

    return BertTextEncoder("random://tiny", max_length=16, pooling="mean", trainable_layers=1, seed=3)


@pytest.fixture(scope="session")
def split_files(tmp_path_factory):
    """The smoke data set as train/validation/test files (each user's last two interactions held out); the
    training rows also as 4 TFRecord shards, with one unknown item and one empty query among them."""
    import csv

    from tfrec.data import synthetic, to_tfrecord

    root = tmp_path_factory.mktemp("split")
    synthetic.write_smoke(str(root))
    with open(root / "interactions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_user = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    parts = {"train": [], "validation": [], "test": []}
    for seq in by_user.values():
        seq.sort(key=lambda r: int(r["timestamp"]))
        parts["train"] += seq[:-2]
        parts["validation"].append(seq[-2])
        parts["test"].append(seq[-1])
    parts["train"].insert(5, dict(parts["train"][0], item_id="item_not_in_catalog"))
    parts["train"].insert(9, dict(parts["train"][1], query=""))
    for name, part in parts.items():
        with open(root / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    summary = to_tfrecord.convert(str(root / "train.csv"), str(root / "shards" / "train"), shards=4)
    return root, summary["glob"], parts
