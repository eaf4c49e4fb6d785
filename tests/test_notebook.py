"""``notebooks/quickstart_colab.ipynb`` runs headless on CPU with the smoke preset.

No Jupyter kernel (nbclient/ipykernel are not in the pinned stack): a fresh
Python process executes the notebook's code cells in order in one namespace,
as a kernel would. The cells are plain Python (Colab-only steps are guarded:
the install runs only under Colab, TensorBoard's magics only under IPython),
so this is the code a Colab user runs, minus those two guarded branches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart_colab.ipynb"

RUNNER = """
import json, sys
nb = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
    print(f"--- cell {i + 1}", flush=True)
    exec(compile("".join(cell["source"]), f"<cell {i + 1}>", "exec"), namespace)
print("--- all cells ran", flush=True)
"""


def test_notebook_is_clean_and_plain_python():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 5
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None  # committed without outputs
        lines = "".join(cell["source"]).splitlines()
        assert not [ln for ln in lines if ln.lstrip().startswith(("!", "%"))]  # no shell or magic lines


def test_first_cell_installs_from_the_published_repo_without_environment_variables():
    nb = json.loads(NOTEBOOK.read_text())
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert 'REPO_URL = "https://' in first and "environ" not in first
    assert 'PRESET = "smoke"' in first
    tpu = next("".join(c["source"]) for c in nb["cells"] if "TPUStrategy" in "".join(c["source"]))
    assert "TPUClusterResolver" in tpu and "is_fully_defined" in tpu


def test_notebook_runs_headless_on_cpu_with_the_smoke_preset(tmp_path):
    job = tmp_path / "job"
    env = dict(os.environ, PYTHONPATH=str(REPO), TFREC_JOB_DIR=str(job),
               TFREC_EXTRA_SETS="train.epochs=1 train.max_steps_per_epoch=2 eval.baselines=false")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(NOTEBOOK)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "--- all cells ran" in out
    assert "accelerator: CPU" in out and "preset smoke" in out  # the smoke preset is the notebook's default
    assert "static shapes: {" in out and "'query_input_ids': [32, 16]" in out  # the TPU cell's check ran
    assert "serving_default" in out and "'a space adventure with robots': " in out
    assert (job / "export" / "smoke" / "1" / "saved_model.pb").is_file()
    assert "(headless) tensorboard --logdir" in out
