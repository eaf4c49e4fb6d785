"""The training benchmark runs end to end at toy sizes (it is not timed here: it must not rot)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_throughput_prints_every_ratio_line():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--preset", "smoke", "--quick",
         "--rounds", "2", "--steps", "2", "--uncached-steps", "1", "--uncached-rounds", "1",
         "--bert-steps", "2", "--bert-rounds", "1"],
        cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    ratios = dict(re.findall(r"^ratio (.+?): ([0-9.]+)$", out.stdout, flags=re.M))
    assert set(ratios) == {"tfrec/tfrs_reference", "cached/uncached", "xla_on/xla_off", "mixed_bfloat16/float32",
                           "lora/frozen", "full/frozen", "full/lora", "streamed/in_memory",
                           "input_only streamed/in_memory"}, out.stdout[-3000:]
    assert all(float(v) > 0 for v in ratios.values())
    table = re.findall(r"^  (frozen|lora|full) +([0-9,]+) +([0-9,]+) ", out.stdout, flags=re.M)
    params = {mode: (int(total.replace(",", "")), int(encoder.replace(",", ""))) for mode, total, encoder in table}
    assert params["frozen"][1] == 0 < params["lora"][1] < params["full"][1]  # encoder parameters that train
