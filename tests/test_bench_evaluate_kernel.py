"""bench/evaluate_kernel.py on a tiny catalog: the replaced kernel and the new one agree, and the ratio lines print."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_evaluate_kernel", REPO / "bench" / "evaluate_kernel.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_old_and_new_kernels_rank_alike_and_the_ratios_print(capsys):
    assert bench.main(["--queries", "50", "--items", "300", "--dim", "4", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "ratio new/old wall at 50x300x4:" in out and "ratio new/old cpu at 50x300x4:" in out
    assert out.count("round ") == 2


def test_the_replaced_kernel_is_a_faithful_reference():
    import numpy as np

    rng = np.random.default_rng(1)
    q, items = rng.integers(-1, 2, (9, 3)).astype(np.float32), rng.integers(-1, 2, (23, 3)).astype(np.float32)
    targets = rng.integers(0, 23, 9)
    scores = q @ items.T  # small integers: exact, with real ties (counted against the target)
    dense = (scores >= scores[np.arange(9), targets][:, None]).sum(axis=1)
    assert bench.old_target_ranks(q, items, targets, query_chunk=4, item_chunk=5).tolist() == dense.tolist()
