"""Makes the repo root importable so ``import tfrec`` works without installing it."""

import os
import sys

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tfrec  # noqa: E402,F401  (must precede any tensorflow import)
