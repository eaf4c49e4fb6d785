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
                           "input_only streamed/in_memory", "sampled/in_batch", "mixed/in_batch",
                           "full/in_batch"}, out.stdout[-3000:]
    # Each headline ratio is the median of its per-round ratios: it lies within their printed spread, over the
    # number of rounds asked for (section 2 --uncached-rounds, sections 3-4 --bert-rounds, the input-only
    # comparison max(3, rounds // 4)).
    spreads = re.findall(r"^ratio (.+?): ([0-9.]+)\n  \((\d+) interleaved rounds.*?per-round (?:ratio )?min ([0-9.]+), "
                         r"max ([0-9.]+)", out.stdout, flags=re.M)
    rounds = {"tfrec/tfrs_reference": 2, "cached/uncached": 1, "xla_on/xla_off": 1, "mixed_bfloat16/float32": 1,
              "lora/frozen": 1, "full/frozen": 1, "full/lora": 1, "streamed/in_memory": 2,
              "input_only streamed/in_memory": 3, "sampled/in_batch": 2, "mixed/in_batch": 2, "full/in_batch": 2}
    assert {name: int(n) for name, _, n, _, _ in spreads} == rounds, out.stdout[-3000:]
    for name, median, _, low, high in spreads:
        assert float(low) <= float(median) <= float(high), name
    table = re.findall(r"^  (frozen|lora|full) +([0-9,]+) +([0-9,]+) ", out.stdout, flags=re.M)
    params = {mode: (int(total.replace(",", "")), int(encoder.replace(",", ""))) for mode, total, encoder in table}
    assert params["frozen"][1] == 0 < params["lora"][1] < params["full"][1]  # encoder parameters that train
