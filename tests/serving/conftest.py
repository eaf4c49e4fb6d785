"""Shared fixtures for the serving tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `pytest tests/serving` from anywhere finds `serving`
    sys.path.insert(0, str(REPO))
