"""Importing the library starts no TensorFlow runtime: a multi-worker strategy must configure it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_importing_every_stage_leaves_the_tf_context_unstarted():
    code = ("import tfrec\n"
            "from tensorflow.python.eager import context\n"
            "import tfrec.run, tfrec.export.savedmodel, tfrec.trained, trainer.task, serving.reindex\n"
            "print(context.context()._initialized)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
