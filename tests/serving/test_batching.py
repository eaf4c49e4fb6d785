"""serving.batching: merging, padding by size class, isolation, deadlines."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serving.batching import Batcher, DeadlineExceeded, size_class


def test_batcher_merges_pads_splits_and_isolates_failures():
    calls = []

    def run(inputs):
        calls.append({n: a.copy() for n, a in inputs.items()})
        if b"bad" in inputs["q"].tolist():
            raise ValueError("bad row")
        time.sleep(0.05)
        return {"echo": inputs["q"], "width": np.full(len(inputs["q"]), inputs["e"].shape[1])}

    batcher = Batcher(run, max_batch_size=64, timeout_s=0.5, paddable={"e"},
                      arriving=lambda: 1)  # always "someone arriving": wait the full timeout
    results: dict[int, object] = {}

    def submit(i):
        q = np.array([f"q{i}".encode(), b"bad" if i == 3 else b"ok"], dtype=object)
        e = np.full((2, 2 + i % 2), b"x", dtype=object)  # widths 2 and 3: one size class
        try:
            results[i] = batcher.submit({"q": q, "e": e}, rows=2)
        except ValueError as err:
            results[i] = err

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls[0]["q"]) == 12 and calls[0]["e"].shape == (12, 3)  # merged and padded
    for i in range(6):
        if i == 3:
            assert isinstance(results[i], ValueError)  # only the bad request fails
        else:
            assert results[i]["echo"].tolist() == [f"q{i}".encode(), b"ok"]


def test_batcher_never_pads_narrow_requests_to_a_wide_one():
    """Size classes: a 1000-wide exclusion list runs apart from 0- to 16-wide ones (which merge)."""
    calls = []

    def run(inputs):
        calls.append((len(inputs["q"]), inputs["e"].shape[1]))
        time.sleep(0.05)
        return {"echo": inputs["q"]}

    batcher = Batcher(run, max_batch_size=64, timeout_s=0.5, paddable={"e"}, arriving=lambda: 1)
    widths = [0, 1000, 16, 2, 1000]
    threads = [threading.Thread(target=batcher.submit, args=(
        {"q": np.array([b"q"], dtype=object), "e": np.full((1, w), b"x", dtype=object)}, 1)) for w in widths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(calls) == [(2, 1000), (3, 16)], calls
    assert [size_class(w) for w in (0, 16, 17, 31, 32, 1000)] == [0, 0, 5, 5, 6, 10]


def test_batcher_deadline_and_cancel_free_a_queued_request():
    """A queued request whose deadline passes, or whose client goes away, leaves the queue at once."""
    release = threading.Event()

    def run(inputs):
        release.wait(10)
        return {"echo": inputs["q"]}

    batcher = Batcher(run, max_batch_size=1, timeout_s=0.0, num_batch_threads=1)
    one = {"q": np.array([b"q"], dtype=object)}
    first = threading.Thread(target=batcher.submit, args=(one, 1))
    first.start()
    time.sleep(0.1)  # the first request is running (and blocked); the next ones queue behind it
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        batcher.submit(one, 1, deadline=time.monotonic() + 0.3)
    assert 0.25 < time.monotonic() - start < 1.0
    with pytest.raises(DeadlineExceeded):
        batcher.submit(one, 1, cancelled=lambda: time.monotonic() - start > 0.5)
    assert not batcher._queue  # neither is left to run later
    release.set()
    first.join(10)
    assert batcher.submit(one, 1)["echo"].tolist() == [b"q"]
