"""tfrec: BERT two-tower retrieval and ranking on TensorFlow Recommenders.

Importing this package prepares the TensorFlow runtime: TFRS 0.7.7 and the
transformers TF classes need Keras 2 (the ``tf-keras`` package), which
TensorFlow only uses when ``TF_USE_LEGACY_KERAS=1`` is set before its first
import. TensorFlow's C++ log noise is turned down unless the user set a level.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "tfrec needs Keras 2 (tf-keras), but tensorflow was imported before tfrec "
        "without TF_USE_LEGACY_KERAS=1, so tf.keras is Keras 3. Import tfrec first, "
        "or set TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
