"""A small dynamic batcher: concurrent requests for one signature run as one call.

``Batcher.submit`` queues a request (a dict of arrays with a leading batch
dimension) and blocks until its slice of the merged result is ready. There is
no batching thread: a waiting caller becomes the leader, takes the oldest
request plus every compatible request that arrives within ``timeout_s`` of it
(up to ``max_batch_size`` rows), pads the ``paddable`` ``[rows, e]`` inputs to a
common width, runs once in its own thread, splits the outputs by rows and hands
leadership on. Up to ``num_batch_threads`` batches run at once (TF Serving's
name), so one heavy batch does not hold up the light ones queued behind it. It stops waiting early when ``arriving()`` says
no other request is on its way, so a lone client pays neither a batching delay
nor a thread switch. If a merged batch fails, its requests are retried one by
one so that only a bad one fails.

Requests are compatible when their non-paddable inputs agree in dtype and
trailing shape and their paddable widths fall in the same size class: up to
``NARROW`` (padding that few ids costs nothing), then powers of two (17-31,
32-63, ...), so padding at most doubles a wide request's width and a wide
request never pads narrow ones. A request whose ``deadline`` passes (or
whose ``cancelled()`` turns true, e.g. its client went away) while it is still
queued is taken off the queue and fails with ``DeadlineExceeded``; one already
running finishes, but its caller stops waiting at the deadline.

Usage::

    batcher = Batcher(signature, max_batch_size=64, timeout_s=0.002,
                      paddable={"exclude_item_ids"})
    outputs = batcher.submit({"query_text": q, "exclude_item_ids": e}, rows=len(q))
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from serving.signatures import pad_to

Arrays = dict[str, np.ndarray]
_CANCEL_CHECK_S = 0.05  # how often a waiting request looks at cancelled()


NARROW = 16  # paddable widths up to this share one size class


def size_class(width: int) -> int:
    """0 for widths up to NARROW, else the bit length (17-31 -> 5, 32-63 -> 6, ...)."""
    return 0 if width <= NARROW else width.bit_length()


class DeadlineExceeded(Exception):
    """A request's deadline passed (or it was cancelled) before its batch ran."""


class _Task:
    __slots__ = ("inputs", "rows", "arrival", "key", "taken", "done", "result", "error")

    def __init__(self, inputs: Arrays, rows: int, paddable: frozenset[str]):
        self.inputs, self.rows, self.arrival = inputs, rows, time.monotonic()
        self.key = tuple(sorted((n, a.dtype.str, a.shape[1:]) if n not in paddable
                                else (n, a.dtype.str, size_class(a.shape[1]))
                                for n, a in inputs.items()))
        self.taken = False  # in a batch that is running
        self.done = False
        self.result: Arrays | None = None
        self.error: BaseException | None = None


class Batcher:
    """Merges concurrent calls of ``run_fn`` (see the module docstring).

    Args:
      run_fn: arrays with a leading batch dimension -> outputs with the same one.
      max_batch_size: most rows in one call.
      timeout_s: longest time the oldest queued request waits for company.
      paddable: names of ``[rows, e]`` inputs that may be padded to a common ``e``.
      arriving: returns how many requests are parsed but not yet submitted.
      on_batch: called with the row count of every call (for metrics).
      num_batch_threads: most batches running at once.
    """

    def __init__(self, run_fn: Callable[[Arrays], Arrays], max_batch_size: int, timeout_s: float,
                 paddable: frozenset[str] | set[str] = frozenset(),
                 arriving: Callable[[], int] = lambda: 0,
                 on_batch: Callable[[int], None] = lambda rows: None, num_batch_threads: int = 2):
        self._run_fn, self._max, self._timeout = run_fn, max_batch_size, timeout_s
        self._paddable = frozenset(paddable)
        self._arriving, self._on_batch = arriving, on_batch
        self._queue: list[_Task] = []
        self._cond = threading.Condition()
        self._gathering = False  # a caller is gathering a batch (one at a time)
        self._running = 0  # batches running
        self._threads = max(1, num_batch_threads)

    def submit(self, inputs: Arrays, rows: int, on_enqueue: Callable[[], None] = lambda: None,
               deadline: float = float("inf"), cancelled: Callable[[], bool] = lambda: False
               ) -> Arrays:
        """Runs ``inputs`` (``rows`` <= max_batch_size rows), possibly merged with others.

        ``deadline`` is a ``time.monotonic()`` instant; DeadlineExceeded past it (or once
        ``cancelled()``), see the module docstring.
        """
        task = _Task(inputs, rows, self._paddable)
        with self._cond:
            self._queue.append(task)
            on_enqueue()
            self._cond.notify_all()  # a leader waiting for company looks again
        while True:
            with self._cond:
                while not task.done and (task.taken or self._gathering or self._running >= self._threads):
                    left = deadline - time.monotonic()
                    if left <= 0 or cancelled():
                        if task in self._queue:
                            self._queue.remove(task)
                        raise DeadlineExceeded("cancelled" if left > 0 else "deadline exceeded")
                    self._cond.wait(min(left, _CANCEL_CHECK_S))
                if task.done:
                    break
                self._gathering = True
                batch = self._gather()
                self._gathering = False
                self._running += 1
                self._cond.notify_all()  # another caller may gather the next batch meanwhile
            try:
                if batch:
                    self._run_isolated(batch)
            finally:
                with self._cond:
                    for t in batch:
                        t.done = True
                    self._running -= 1
                    self._cond.notify_all()
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def _gather(self) -> list[_Task]:
        """Takes the next batch off the queue (lock held; may wait for company)."""
        while True:
            if not self._queue:  # every queued request was cancelled meanwhile
                return []
            first = self._queue[0]
            deadline = first.arrival + self._timeout
            same = [t for t in self._queue if t.key == first.key]
            left = deadline - time.monotonic()
            if sum(t.rows for t in same) >= self._max or left <= 0 or self._arriving() <= 0:
                break
            self._cond.wait(left)
        batch, total = [], 0
        for t in same:
            if total + t.rows <= self._max:
                batch.append(t)
                total += t.rows
        for t in batch:
            t.taken = True
        taken = set(map(id, batch))
        self._queue = [t for t in self._queue if id(t) not in taken]
        return batch

    def _run_isolated(self, batch: list[_Task]) -> None:
        try:
            self._run(batch)
        except BaseException as e:  # noqa: BLE001 - delivered to the waiting callers
            if len(batch) == 1:
                batch[0].error = e
                return
            for t in batch:  # retry alone so that one bad request does not fail the others
                try:
                    self._run([t])
                except BaseException as e1:  # noqa: BLE001
                    t.error = e1

    def _run(self, batch: list[_Task]) -> None:
        total = sum(t.rows for t in batch)
        self._on_batch(total)
        if len(batch) == 1:
            batch[0].result = self._run_fn(batch[0].inputs)
            return
        merged: Arrays = {}
        for name in batch[0].inputs:
            parts = [t.inputs[name] for t in batch]
            if name in self._paddable:
                width = max(p.shape[1] for p in parts)
                parts = [pad_to(p, width) for p in parts]
            merged[name] = np.concatenate(parts, axis=0)
        outputs = self._run_fn(merged)
        for name, out in outputs.items():
            if out.ndim == 0 or out.shape[0] != total:
                raise RuntimeError(f"output '{name}' has shape {out.shape}, not [{total}, ...]")
        offset = 0
        for t in batch:
            t.result = {n: o[offset:offset + t.rows] for n, o in outputs.items()}
            offset += t.rows
