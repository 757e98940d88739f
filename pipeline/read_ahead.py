"""The loader's background stage: plans the next batches and reads their crops ahead of rendering.

One thread per iteration walks the iteration's batches in order.  It computes the plans
(`BatchPreparer.first_plans_of`, PLAN_PAIRS pairs or more in one call) up to 2 x `read_ahead`
batches ahead of the consumer and passes their crops to the shard readers' `prefetch` hint; up to
`read_ahead` batches ahead it reads each batch's crops, split over a pool of reader threads
(`read_threads`, tasks of MIN_READ_CHUNK crops or more; 0 reads in this thread);
then it finishes the batches in order (replacing pairs with unusable crops), groups them into
DALI runs with their input values and queues the runs for the consumer (`get`).  Nothing here
decides content: a run is the same whatever the threads and timing (`pipeline.prepare`).

An error in this stage is raised by the consumer's next `get` (the same exception).  `close`
stops the thread; an iteration that is abandoned closes its stage, and stages still running at
interpreter exit are closed by an atexit hook (the thread is a daemon, so it never blocks exit).
"""
from __future__ import annotations

import atexit
import collections
import threading
import weakref

import numpy as np
import torch

from pipeline.prepare import unique_refs

PLAN_PAIRS = 128   # plans are drawn for at least this many pairs at once (a call's fixed cost)
MIN_READ_CHUNK = 32   # crops per reader task at least (each task costs a thread hand-over)
_LIVE = weakref.WeakSet()   # stages whose thread may still run (closed at interpreter exit)


@atexit.register
def _close_live_stages() -> None:
    for stage in list(_LIVE):
        stage.close()


class _Reads:
    """The crops of one batch, being read by the pool (or already read)."""

    def __init__(self, source, refs: list, pool, threads: int):
        known_bad = [r for r in refs if r in source.bad]
        self.done = dict.fromkeys(known_bad)
        todo = [r for r in refs if r not in self.done]
        if pool is None or not todo:
            self.done.update(zip(todo, source.read_many(todo)))
            self.futures = []
            return
        # few large tasks: each one wakes a reader thread and hands the GIL over (measured:
        # the CPU per crop grows with the tasks per batch); batches read ahead keep the
        # threads busy together
        tasks = min(threads, max(1, len(todo) // MIN_READ_CHUNK))
        chunks = [todo[k::tasks] for k in range(tasks)]
        self.futures = [(chunk, pool.submit(source.read_many, chunk)) for chunk in chunks]

    def result(self) -> dict:
        """ref -> bytes, or None for an unusable crop (waits for the reads)."""
        for chunk, future in self.futures:
            self.done.update(zip(chunk, future.result()))
        self.futures = []
        return self.done

    def cancel(self) -> None:
        for _, future in self.futures:
            future.cancel()


class ReadAhead:
    """Prepared runs of batches [first, total) of `epoch`, produced by a background thread.

    preparer: BatchPreparer; source: its CropSource; run_batches: batches per DALI run;
    read_ahead: batches whose crops may be read before the consumer takes them (at least one
    run's worth); pool: a ThreadPoolExecutor of `read_threads` reader threads, or None;
    device: the loader's torch device (the thread makes it current, so pinned host buffers
    belong to the right GPU).
    """

    def __init__(self, preparer, source, epoch: int, first: int, total: int, run_batches: int,
                 read_ahead: int, pool=None, read_threads: int = 0, device=None):
        self.preparer, self.source, self.epoch = preparer, source, int(epoch)
        self.first, self.total, self.run_batches = int(first), int(total), int(run_batches)
        self.read_ahead = max(int(read_ahead), self.run_batches)
        self.pool, self.read_threads, self.device = pool, int(read_threads), device
        self.plan_batches = max(1, -(-PLAN_PAIRS // preparer.batch_size))
        self._cond = threading.Condition()
        self._runs = collections.deque()    # finished runs, oldest first
        self._taken = self.first            # batches below this were taken by the consumer
        self._error = None
        self._finished = False
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="pair-read-ahead", daemon=True)
        _LIVE.add(self)
        self._thread.start()

    # ---- consumer side -------------------------------------------------------------------
    def get(self):
        """The next PreparedRun, waiting for it; raises the stage's error if it failed."""
        with self._cond:
            while not (self._runs or self._error or self._finished or self._stop):
                self._cond.wait(1.0)
                if not self._thread.is_alive() and not self._runs:
                    break
            if self._runs:
                run = self._runs.popleft()
                self._taken += len(run.batches)
                self._cond.notify_all()
                return run
            if self._error is not None:
                raise self._error
        raise RuntimeError("the read-ahead stage has no more batches (it was closed or ended early)")

    def close(self) -> None:
        """Stop the thread and wait for it (reads in progress finish first)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        _LIVE.discard(self)

    # ---- background thread ---------------------------------------------------------------
    def _work(self) -> None:
        reading = collections.deque()   # (batch, plans, _Reads): reads started, oldest first
        try:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            planned = collections.deque()   # (batch, plans): planned and hinted, not read yet
            upcoming = self.first           # next batch to plan
            run = []
            while True:
                with self._cond:
                    while not self._stop and not self._can_progress(upcoming, planned, reading):
                        self._cond.wait()
                    if self._stop:
                        return
                    taken = self._taken
                # Plan and hint up to 2 x read_ahead batches ahead (a group of batches at a
                # time); read up to read_ahead.
                while upcoming < min(self.total, taken + 2 * self.read_ahead):
                    count = min(self.plan_batches, self.total - upcoming)
                    group = self.preparer.first_plans_of(self.epoch, upcoming, count)
                    self.source.prefetch(np.concatenate([a for p in group
                                                         for a in (p.template_ref, p.search_ref)]))
                    planned.extend(enumerate(group, upcoming))
                    upcoming += count
                while planned and planned[0][0] < taken + self.read_ahead:
                    batch, plans = planned.popleft()
                    reads = _Reads(self.source, unique_refs(plans), self.pool, self.read_threads)
                    reading.append((batch, plans, reads))
                if not reading:
                    if upcoming >= self.total and not planned:
                        with self._cond:
                            self._finished = True
                            self._cond.notify_all()
                        return
                    continue
                batch, plans, reads = reading.popleft()
                run.append(self.preparer.finish(self.epoch, batch, plans, reads.result()))
                if len(run) == self.run_batches or batch == self.total - 1:
                    prepared = self.preparer.run(run)
                    run = []
                    with self._cond:
                        self._runs.append(prepared)
                        self._cond.notify_all()
        except BaseException as err:  # handed to the consumer; a closed stage just ends
            with self._cond:
                if not self._stop:
                    self._error = err
                self._cond.notify_all()
        finally:
            for _, _, reads in reading:
                reads.cancel()

    def _can_progress(self, upcoming: int, planned, reading) -> bool:
        if reading:
            return True
        if planned:
            return planned[0][0] < self._taken + self.read_ahead
        return upcoming >= self.total or upcoming < self._taken + 2 * self.read_ahead
