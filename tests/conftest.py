"""Test set-up: the repo on sys.path and tfrec imported before tensorflow."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tfrec  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before any tensorflow import)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_cfg():
    """A fresh smoke config per call (dataclasses are mutable)."""
    from tfrec import config

    return lambda *sets: config.build("smoke", None, list(sets))


@pytest.fixture(scope="session")
def tiny_encoder():
    from tfrec.encoders.text import BertTextEncoder

    return BertTextEncoder("random://tiny", max_length=16, pooling="mean", trainable_layers=1, seed=3)
