"""tfrec: BERT two-tower retrieval and ranking on TensorFlow Recommenders.

The Python API (each name imports TensorFlow only when first used)::

    import tfrec

    config = tfrec.load_config(preset="smoke", overrides=["train.epochs=1"])
    run = tfrec.fit(config, "runs/smoke")          # -> tfrec.Run
    run.metrics["model"]["recall@10"]
    served = tfrec.load_export(run.export_dir)
    served.signatures["serving_default"](query_text=tf.constant(["toy story"]))

For your own loop: :func:`build_model`, :func:`evaluate_model`,
:func:`export_model` and the other stages in :mod:`tfrec.run`; :func:`load_trained`
rebuilds a finished run's model from its job dir.

Importing this package prepares the TensorFlow runtime: TFRS 0.7.7 and the
transformers TF classes need Keras 2 (the ``tf-keras`` package), which
TensorFlow only uses when ``TF_USE_LEGACY_KERAS=1`` is set before its first
import. TensorFlow's C++ log noise is turned down unless the user set a level.
"""

import importlib as _importlib
import os as _os
import sys as _sys

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "tensorflow" in _sys.modules and _os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "tfrec needs Keras 2 (tf-keras), but tensorflow was imported before tfrec "
        "without TF_USE_LEGACY_KERAS=1, so tf.keras is Keras 3. Import tfrec first, "
        "or set TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
    )
_os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access (PEP 562) so `import tfrec` stays cheap.
_API = {"load_config": "tfrec.api", "load_export": "tfrec.api", "fit": "tfrec.run", "Run": "tfrec.run",
        "build_model": "tfrec.run", "evaluate_model": "tfrec.run", "export_model": "tfrec.run",
        "load_trained": "tfrec.trained"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(_importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfrec' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*_API, "__version__"])
