"""The training entry point: ``python -m trainer.task``."""

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
