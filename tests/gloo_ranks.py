"""Helpers for tests that start a real gloo process group of two ranks with torch.multiprocessing.

A rank reports through its own JSON file (``report``) and ends with ``end_rank``, which leaves the
group and exits without the interpreter's shutdown. gloo frees each finished collective on one of
its worker threads a moment after the caller has gone on, and that needs the GIL (the work keeps
the caller's thread-local state, Python objects among them). torch never joins those threads
(neither destroy_process_group nor the backend's shutdown does, and a DDP wrapper keeps the group
alive), so a worker still freeing when the interpreter shuts down is killed mid-unwind and a rank
that passed dies of SIGABRT ("terminate called without an active exception"). CI saw this about
once in 30 runs; two core dumps showed ~AsyncAllgatherWork and ~AsyncAllreduceWork on a gloo worker
thread while the main thread was in Py_FinalizeEx. Exiting with os._exit leaves no such window.
"""
import json
import os
import socket
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.fileio import atomic_write
from train.distributed import shutdown_distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(fn, *args, world: int = 2) -> None:
    """``fn(rank, world, port, *args)`` in ``world`` fresh processes; raises if any rank fails."""
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def set_rank_env(rank: int, world: int, port: int, **extra: str) -> None:
    """The environment torchrun gives one rank on a single node."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       **extra})


def report(out_dir, rank: int, result: dict) -> None:
    """This rank's result, for the test process to read with ``reports``."""
    atomic_write(Path(out_dir) / f"rank{rank}.json", json.dumps(result))


def reports(out_dir, world: int = 2) -> list:
    """Every rank's ``report``, in rank order."""
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]


def end_rank() -> None:
    """Wait for every rank, leave the group, and exit this process with status 0 at once."""
    dist.barrier()
    shutdown_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
