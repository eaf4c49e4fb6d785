"""The index benchmark runs end to end at a toy size (not timed here: it must not rot)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_index_bench_prints_its_summary_lines(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "index.py"), "--n", "1500", "--dim", "8", "--queries", "64",
         "--kinds", "brute_force,brute_force_int8", "--seconds", "0.1", "--rounds", "1",
         "--tmp", str(tmp_path)],
        cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    speed = dict((kind, float(recall)) for kind, recall in
                 re.findall(r"^(\w+): recall@10=([0-9.]+) speedup=[0-9.]+x$", out.stdout, flags=re.M))
    assert set(speed) == {"brute_force_int8"}, out.stdout[-3000:]
    assert all(0 < recall <= 1 for recall in speed.values())
    memory = {kind: float(b) for kind, b in re.findall(r"^(\w+): bytes_per_item=([0-9.]+)$", out.stdout, flags=re.M)}
    assert set(memory) == {"brute_force", "brute_force_int8"}, out.stdout[-3000:]
    # 8 float32 dimensions (32 bytes) against 8 int8 codes and one float32 scale (12 bytes), ids alike in both.
    assert memory["brute_force_int8"] < memory["brute_force"]
    # The server-memory figure comes from a separate process that loads the SavedModel.
    assert re.search(r"^\[brute_force_int8\] .* server_rss=\d+MB", out.stdout, flags=re.M), out.stdout[-3000:]
