"""Stopping a training run between two steps, the way clusters stop jobs.

SIGTERM (what SLURM and other schedulers send at preemption and at the time limit) and SIGINT
(Ctrl-C) are recorded by :class:`StopSignals` instead of ending the process; the trainer asks
:class:`StopVote` after every step whether to stop there, writes a checkpoint that ``--resume``
continues exactly and exits 143 / 130. The same vote stops a run whose shards turned out too
damaged (``TRAIN.MAX_REPLACED_FRAC``).

In a DDP run every rank votes after every step (a one-integer all-reduce on the host, on gloo),
so all ranks stop after the same step even when only one of them got the signal, and none is
left waiting in a collective for a rank that has gone.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["StopSignals", "StopVote", "Stop", "exit_status", "resume_command"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by ``signum`` (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum)


class StopSignals:
    """While entered (main thread only), SIGTERM and SIGINT are recorded in ``signum`` instead
    of ending the process; the first one counts, later ones (torchrun forwards the signal that a
    scheduler also sends to every process) change nothing. SIGKILL and SIGQUIT still end it at once.
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _record(self, signum, frame):
        if not self.signum:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False


@dataclass(frozen=True)
class Stop:
    """Why every rank stops: a signal (``signum``) and/or too many replaced crops (``damaged``)."""
    signum: int = 0
    damaged: bool = False

    def __bool__(self) -> bool:
        return bool(self.signum or self.damaged)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class StopVote:
    """The ranks' agreement on whether to stop after the current step.

    Every rank must call it at the same points (the trainer: before each epoch and after each
    step). Single process: no communication. DDP: one all-reduce (MAX) of a CPU integer on a gloo
    group (the default group when it is gloo, else one made here at construction, by every rank).
    """

    def __init__(self, signals: StopSignals | None, distributed: bool):
        self.signals = signals
        self.distributed = distributed
        self.group = None
        if distributed and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def __call__(self, damaged: bool = False) -> Stop:
        signum = self.signals.signum if self.signals is not None else 0
        if not self.distributed:
            return Stop(signum, bool(damaged))
        votes = torch.tensor([signum, int(damaged)], dtype=torch.int64)  # MAX: SIGTERM (15) outranks SIGINT (2)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.group)
        return Stop(int(votes[0]), bool(votes[1]))

    def gather(self, value) -> list:
        """Every rank's ``value`` (a small picklable object), in rank order; only at a stop."""
        if not self.distributed:
            return [value]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value, group=self.group)
        return out


def resume_command(argv: list[str] | None = None) -> str:
    """The command that continues this run: the one that started it, with ``--resume`` instead of
    ``--overwrite`` / ``--resume CKPT``; under torchrun, with torchrun's node-local options."""
    argv = list(sys.argv if argv is None else argv)
    args, i = [], 1
    while i < len(argv):
        a = argv[i]
        if a == "--overwrite":
            i += 1
            continue
        if a == "--resume":
            i += 2 if i + 1 < len(argv) and not argv[i + 1].startswith("-") else 1
            continue
        if a.startswith("--resume="):
            i += 1
            continue
        args.append(a)
        i += 1
    # --resume goes before --opts, whose values run to the end of the line
    at = args.index("--opts") if "--opts" in args else len(args)
    args[at:at] = ["--resume"]
    script = shlex.quote(argv[0]) if argv else "train/run.py"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        nodes = int(os.environ.get("WORLD_SIZE", "1")) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        launcher = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}"
        if nodes > 1:
            launcher += f" --nnodes={nodes} (and this job's rendezvous options)"
        return f"{launcher} {script} {shlex.join(args)}"
    return f"python {script} {shlex.join(args)}"
