"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)
and the device of each process.

A plain ``python train/run.py`` (no torchrun variables) is a single-process run: rank 0 of 1,
with no process group at all. Every process works on its own GPU: ``--device cuda`` means
``cuda:LOCAL_RANK`` (model, loader, DALI, streams); ``--device cuda:N`` pins a single process
per node to GPU N.
"""
from __future__ import annotations

import inspect
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.devices import local_world_size

from .preflight import PreflightError

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "choose_device", "loader_device",
           "parse_device", "wrap_ddp"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def parse_device(device) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' as a torch.device; ValueError naming the value otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return torch.device("cpu") if dev.type == "cpu" else dev


def choose_device(device, local_rank: int, local_processes: int, cuda_count: int) -> torch.device:
    """This process's training device: 'cpu'; 'cuda' -> ``cuda:LOCAL_RANK``; 'cuda:N' -> ``cuda:N``.

    Pure (``cuda_count`` is the number of visible GPUs), so it is testable without one. Raises
    PreflightError for CUDA without a GPU, a GPU index that does not exist, and 'cuda:N' with
    more than one process on the node (they would all share GPU N).
    """
    dev = parse_device(device)
    if dev.type == "cpu":
        return dev
    if cuda_count < 1:
        raise PreflightError(f"--device {device} was requested but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu")
    if dev.index is None:
        index, why = local_rank, f"LOCAL_RANK={local_rank}"
    elif local_processes > 1:
        raise PreflightError(f"--device {device} names one GPU but {local_processes} processes run on this node; "
                             f"use --device cuda (each process takes cuda:LOCAL_RANK)")
    else:
        index, why = dev.index, f"--device {device}"
    if index >= cuda_count:
        raise PreflightError(f"{why} needs GPU {index} but only {cuda_count} GPU(s) are visible on this node")
    return torch.device("cuda", index)


def loader_device(setting: str, train_device: torch.device) -> torch.device:
    """Where the loader renders for TRAIN.LOADER_DEVICE ``setting``: '' = the training device,
    'cpu', or 'cuda' = the training GPU (with its index, never a bare 'cuda' that means GPU 0)."""
    if setting not in ("", "cpu", "cuda"):
        raise PreflightError(f"TRAIN.LOADER_DEVICE={setting!r} must be '', 'cpu' or 'cuda'")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" and train_device.type != "cuda":
        raise PreflightError("TRAIN.LOADER_DEVICE='cuda' needs a CUDA training device (--device cuda)")
    return train_device


def init_distributed(device) -> DistContext:
    """Read torchrun's environment, pick and select this rank's device, init the process group
    if world > 1 (NCCL on CUDA, gloo on CPU)."""
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = choose_device(device, local, local_world_size(), cuda_count)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # a bare 'cuda' anywhere (autocast, DALI, streams) now means this GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


# How long a gloo rank lets the backend's worker threads finish before it leaves (shutdown_distributed).
GLOO_DRAIN_S = 0.2


def shutdown_distributed() -> None:
    """Leave the process group, if there is one (every rank, once, at the end).

    On gloo, first a short pause with the GIL released. gloo frees each finished collective on a
    worker thread a moment after the caller has gone on, and that takes the GIL (the work keeps the
    caller's thread-local state, Python objects among them). torch never joins those threads, so a
    worker still freeing when the interpreter shuts down is killed mid-unwind and the rank ends in
    SIGABRT ("terminate called without an active exception") after a clean run, e.g. right after an
    object broadcast that reported an error. The pause shrinks that to a worker starved of the CPU
    for all of it; it cannot rule it out (tests/gloo_ranks.py ends its ranks with os._exit).
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            time.sleep(GLOO_DRAIN_S)
        dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, device_ids=None) -> DDP:
    """``module`` in DDP with rank-local buffers: its BN statistics are never synchronised, neither
    at construction nor before a forward (PySOT's behaviour; rank 0's are the ones saved).

    That is ``broadcast_buffers=False``. torch 2.13 deprecates the argument (a FutureWarning on
    every rank) for ``forward_sync_buffers``, which still broadcasts rank 0's buffers at
    construction: the trainer re-wraps at the unfreeze, when each rank's statistics differ, so
    that is not the same. Where torch offers ``init_sync_buffers`` the pair of new arguments is
    used; otherwise ``broadcast_buffers=False`` (not deprecated before 2.13), and its deprecation
    warning, whose own advice this is, is not shown.
    """
    accepted = inspect.signature(DDP.__init__).parameters
    if "init_sync_buffers" in accepted:
        return DDP(module, device_ids=device_ids, forward_sync_buffers=False, init_sync_buffers=False,
                   find_unused_parameters=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DDP(module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=False)
