"""bench/scale.py's table arithmetic (the end-to-end runs are the benchmark itself, not a test)."""

import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale)


def test_growth_exponent_is_the_log_log_slope():
    rows = [{"interactions": n, "stage": "train", "seconds": 2e-3 * n} for n in (1e5, 1e6, 1e7)]
    rows += [{"interactions": n, "stage": "evaluate", "seconds": 1e-9 * n * n} for n in (1e5, 1e6)]
    rows += [{"interactions": 1e5, "stage": "index", "seconds": 1.0}]  # one size: no slope
    assert scale.growth_exponents(rows) == {"train": 1.0, "evaluate": 2.0}


def test_rows_read_timings_per_epoch_and_shares():
    timings = {"stages": {"read": {"seconds": 10.0, "calls": 1, "peak_rss_mb": 500.0, "examples": 1000},
                          "train": {"seconds": 60.0, "calls": 2, "peak_rss_mb": 900.0, "examples": 4000},
                          "validation": {"seconds": 4.0, "calls": 2, "peak_rss_mb": 800.0},
                          "evaluate": {"seconds": 30.0, "calls": 1, "peak_rss_mb": 700.0}}}
    rows = {r["stage"]: r for r in scale.rows_for_run(1000, 100, timings, 101.0, 950.0, {"test": 300})}
    assert rows["train"]["seconds"] == 30.0 and rows["train"]["examples_per_s"] == round(2000 / 30.0, 1)  # per epoch
    assert rows["evaluate"]["examples_per_s"] == 10.0  # from the test count
    assert math.isclose(rows["train"]["share"], 0.6) and math.isclose(rows["read"]["share"], 0.1)
    assert rows["total"]["peak_rss_mb"] == 950.0
    text = scale.format_table(list(rows.values()), {"train": 1.02})
    assert "train=1.02" in text and len(text.splitlines()) == 7


def test_sizes_parse():
    assert scale.parse_sizes("1e5x1e4,1e6x1e5") == [(100000, 10000), (1000000, 100000)]


def test_evaluation_ratio_counts_evaluate_and_every_baseline_over_training():
    timings = {"stages": {"train": {"seconds": 100.0}, "validation": {"seconds": 10.0},
                          "evaluate": {"seconds": 30.0}, "baseline:popularity": {"seconds": 5.0},
                          "baseline:id_two_tower": {"seconds": 45.0}, "export": {"seconds": 60.0}}}
    assert scale.evaluation_ratio(timings) == 0.8
    assert scale.evaluation_ratio({"stages": {"evaluate": {"seconds": 1.0}}}) is None
    assert scale.largest_stage_ratio(timings) == ("baseline:id_two_tower", 0.45)  # export is not counted
    assert scale.largest_stage_ratio({"stages": {"train": {"seconds": 1.0}}}) is None


def test_peak_rss_ratio_compares_the_training_peaks():
    def run(n, train_mb, total_mb):
        return {"interactions": n, "peak_rss_mb": total_mb,
                "timings": {"stages": {"read": {"peak_rss_mb": 3000.0}, "train": {"peak_rss_mb": train_mb}}}}

    line = scale.peak_rss_ratio(run(1_000_000, 1000.0, 1200.0), run(10_000_000, 1100.0, 1500.0))
    assert line.startswith("ratio peak_rss 1e7/1e6: 1.10 (training 1100 MB / 1000 MB; whole run 1.25")
    assert [scale.size_name(n) for n in (300_000, 10_000_000)] == ["3e5", "1e7"]
