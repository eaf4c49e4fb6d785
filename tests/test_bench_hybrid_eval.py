"""bench/hybrid_eval.py on a tiny shop: the replaced hybrid scoring and the new one give the same metrics."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_hybrid_eval", REPO / "bench" / "hybrid_eval.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_old_and_new_hybrid_scoring_agree_with_exclusions(capsys, tmp_path):
    # 300 users' last two rows held out over 400 items (k = 100 of them: wide candidate sets), seen items excluded.
    assert bench.main(["--queries", "300", "--items", "400", "--interactions", "6000", "--dim", "8",
                       "--exclude-seen", "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ratio old/new at 300 validation + 300 test queries x 400 items:" in out and "metrics identical" in out
