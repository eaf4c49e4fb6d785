"""The README's "Python API" example, run as written in a fresh interpreter.

A fresh process proves ``tfrec.load_export`` registers the ops the SavedModel
needs (``tf.saved_model.load`` alone fails there with ``Op type not registered
'FastBertNormalize'``). The example writes ``runs/api-smoke`` under its working
directory, here a temporary folder.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- python-api-example"


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_python_api_example_runs_in_a_fresh_interpreter(tmp_path):
    code = readme_example()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()

    # The printed metrics are the run's eval.json values (model and popularity recall@10).
    job = tmp_path / "runs" / "api-smoke"
    report = json.loads((job / "eval.json").read_text())
    printed = [float(x) for x in lines[-2].split()]
    assert printed == [report["model"]["recall@10"], report["baselines"]["popularity"]["recall@10"]]

    # The served ids: 5 distinct ids of the exported catalog, best first.
    ids = [i.decode() for i in ast.literal_eval("[" + ", ".join(lines[-1].strip("[]").split()) + "]")]
    (version,) = [p for p in (job / "export" / "smoke").iterdir() if p.name.isdigit()]
    catalog = [row.split("\t")[0] for row in
               (version / "assets.extra" / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert len(ids) == 5 and len(set(ids)) == 5 and set(ids) <= set(catalog)
