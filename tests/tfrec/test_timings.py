import json
import time

from tfrec.timings import StageTimes


def test_stages_add_up_calls_keep_their_own_peak_and_write_json(tmp_path):
    times = StageTimes()
    with times.stage("read", examples=100):
        big = bytearray(200 * 1024 * 1024)
        big[::4096] = b"x" * len(big[::4096])  # touch every page: 200 MB resident
        del big
    for _ in range(2):
        with times.stage("train", examples=10):
            time.sleep(0.05)
    times.record("encode", 3.0, note="cached")
    times.write(tmp_path / "timings.json")
    out = json.loads((tmp_path / "timings.json").read_text())
    read, train = out["stages"]["read"], out["stages"]["train"]
    assert train["calls"] == 2 and train["examples"] == 20 and train["seconds"] >= 0.1
    assert read["peak_rss_mb"] >= 200 + train["peak_rss_mb"] * 0.5  # read's 200 MB is not charged to train
    assert out["stages"]["encode"] == {"seconds": 3.0, "calls": 1, "peak_rss_mb": 0.0, "note": "cached"}
    assert out["peak_rss_mb"] >= read["peak_rss_mb"]
    assert "encode " in times.summary() and times.summary().endswith(" MB")


def test_summary_names_nested_stages_inside_their_stage_only():
    times = StageTimes()
    times.started -= 20.0  # a 20 s run
    for name, seconds in [("read", 2.0), ("train", 10.0), ("validation", 3.0), ("export", 4.0), ("index", 0.2)]:
        times.record(name, seconds)
    line = times.summary()
    assert line.startswith("time: train 50% (10s, validation 3s of it), export 20% (4s), read 10% (2s) of 20s;"), line
    assert "index" not in line and line.endswith(" MB")


def test_epoch_callback_and_timed_functions_count_calls():
    times = StageTimes()
    callback = times.epoch_callback(examples_per_epoch=5)
    validate = times.timed("validation", lambda: {"recall@10": 0.5})
    for epoch in range(3):
        callback.on_epoch_begin(epoch)
        assert validate() == {"recall@10": 0.5}
        callback.on_epoch_end(epoch)
    assert times.stages["train"]["calls"] == 3 and times.stages["train"]["examples"] == 15
    assert times.stages["validation"]["calls"] == 3
    assert times.stages["train"]["seconds"] >= times.stages["validation"]["seconds"]


def test_the_current_runs_timer_records_module_level_stages_and_is_a_no_op_outside_a_run(monkeypatch):
    from tfrec import timings

    monkeypatch.setattr(timings, "_current", None)
    with timings.stage("evaluate") as entry:
        assert entry is None  # no run: nothing recorded, nothing fails
    times = timings.begin()
    assert timings.current() is times
    with timings.stage("evaluate", examples=7):
        pass
    assert timings.timed("validation", lambda: 3)() == 3
    assert times.stages["evaluate"]["examples"] == 7 and times.stages["validation"]["calls"] == 1
