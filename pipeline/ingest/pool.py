"""Worker processes that return results in submission order and never hang on a dead worker.

Each worker has its own pipe, so a worker that dies (killed, out of memory), even halfway through
sending a result, shows up as end-of-file on that pipe: `WorkerDied`, not a hang.  (A process pool
with one shared result queue, like concurrent.futures', blocks forever on the half-written message.)
A task is sent only to an idle worker, which is waiting for it, so a large task never deadlocks
against a large result.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import signal
import threading
from multiprocessing.connection import wait

_END = object()


class WorkerDied(RuntimeError):
    """A worker process ended without returning its task's result."""


def _serve(conn, fn, initializer):
    if initializer is not None:
        initializer()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            out = ('ok', fn(task))
        except Exception as e:  # sent to the parent, which raises it
            out = ('error', e)
        try:
            conn.send(out)
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as e:  # the result or the error does not pickle
            conn.send(('error', RuntimeError(f'{type(e).__name__}: {e}')))


class OrderedPool:
    """`workers` spawned processes running fn(task); `imap` yields results in task order."""

    def __init__(self, fn, workers: int, initializer=None):
        ctx = mp.get_context('spawn')  # spawn, not fork: a parent that used OpenCV's threads deadlocks forked children
        self._procs, self._conns = [], []
        # Ctrl-C reaches the whole job; the parent decides what it means. A worker started while
        # SIGINT is ignored keeps ignoring it (Python leaves an inherited SIG_IGN alone), so it cannot
        # end with a traceback while still importing, before an initializer could ignore it. A
        # Ctrl-C in the few milliseconds of these starts is lost (press it again).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for _ in range(workers):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_serve, args=(child, fn, initializer), daemon=True)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def imap(self, tasks, window: int):
        """Results of `tasks` in order, at most `window` tasks submitted and not yet yielded."""
        tasks = iter(tasks)
        free = collections.deque(range(len(self._procs)))
        busy, done = {}, {}  # worker -> task number; task number -> result
        submitted = yielded = 0
        exhausted = False
        while True:
            while free and not exhausted and submitted - yielded < window:
                task = next(tasks, _END)
                if task is _END:
                    exhausted = True
                    break
                w = free.popleft()
                self._conns[w].send(task)
                busy[w] = submitted
                submitted += 1
            if yielded in done:
                yield done.pop(yielded)
                yielded += 1
                continue
            if not busy:
                return
            # with a timeout: Python raises a Ctrl-C only in the main thread, when it runs; a SIGINT the
            # kernel delivers to another thread (numpy's, OpenCV's) does not interrupt this wait
            wait([self._conns[w] for w in busy] + [self._procs[w].sentinel for w in busy], timeout=0.5)
            for w in list(busy):
                if self._conns[w].poll():
                    try:
                        status, payload = self._conns[w].recv()
                    except (EOFError, OSError):
                        raise WorkerDied(self._died(w)) from None
                    done[busy.pop(w)] = payload
                    free.append(w)
                    if status == 'error':
                        raise payload
                elif not self._procs[w].is_alive():
                    raise WorkerDied(self._died(w))

    def _died(self, w: int) -> str:
        p = self._procs[w]
        p.join(1)
        code = p.exitcode
        how = (f'killed by signal {-code}: out of memory, or stopped by hand?' if code is not None and code < 0
               else f'exit status {code}')
        return f'worker process {p.pid} died ({how})'

    def close(self, terminate: bool = False):
        """Stop the workers: ask them to finish, or (`terminate`) end them now."""
        for p, conn in zip(self._procs, self._conns):
            if terminate:
                p.terminate()
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for p, conn in zip(self._procs, self._conns):
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()
