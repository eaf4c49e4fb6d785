import json
import time

from tfrec import timings
from tfrec.timings import StageTimes


def test_stages_add_up_calls_keep_their_own_peak_and_serialise_to_json():
    times = StageTimes()
    with times.stage("read", examples=100):
        big = bytearray(200 * 1024 * 1024)
        big[::4096] = b"x" * len(big[::4096])  # touch every page: 200 MB resident
        del big
    for _ in range(2):
        with times.stage("train", examples=10):
            time.sleep(0.05)
    times.record("encode", 3.0, note="cached")
    out = json.loads(json.dumps(times.to_dict()))  # as run.fit writes timings.json
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


def test_epoch_callback_counts_epochs_and_the_validation_inside_them():
    times = StageTimes()
    callback = times.epoch_callback(examples_per_epoch=5)
    for epoch in range(3):
        callback.on_epoch_begin(epoch)
        with timings.stage(times, "validation"):
            time.sleep(0.01)
        callback.on_epoch_end(epoch)
    assert times.stages["train"]["calls"] == 3 and times.stages["train"]["examples"] == 15
    assert times.stages["validation"]["calls"] == 3
    assert times.stages["train"]["seconds"] >= times.stages["validation"]["seconds"]


def test_a_stage_without_a_timer_records_nothing_and_keeps_no_timer_around():
    with timings.stage(None, "evaluate", examples=7) as entry:
        assert entry is None  # a stage called by hand: nothing recorded, nothing fails
    times = StageTimes()
    with timings.stage(times, "evaluate", examples=7):
        pass
    assert times.stages["evaluate"]["examples"] == 7 and times.stages["evaluate"]["calls"] == 1
    assert not [name for name, value in vars(timings).items() if isinstance(value, StageTimes)]
