"""Which device and how many CPU threads a process uses: one answer for the trainer, the loader,
DALI and the benchmarks.

Under torchrun every process of a node must work on its own GPU (``cuda:LOCAL_RANK``) and take
its share of the node's cores; a device given without an index means the current CUDA device of
the process (which the trainer sets to ``cuda:LOCAL_RANK``), never silently GPU 0.
"""
from __future__ import annotations

import os

import torch

__all__ = ["resolve_device", "usable_cores", "local_world_size", "cores_per_process"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(device) -> torch.device:
    """``device`` ('cpu', 'cuda', 'cuda:N' or a torch.device) with an explicit index for CUDA.

    'cuda' without an index is the process's current CUDA device (``torch.cuda.current_device()``,
    which ``torch.cuda.set_device`` and the trainer set to LOCAL_RANK).  Raises ValueError for
    other device types, for CUDA without a visible GPU and for an index that does not exist.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"device {device!r}: GPU {index} does not exist ({count} visible)")
    return torch.device("cuda", index)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_world_size() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 for a plain process)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))


def cores_per_process() -> int:
    """This process's fair share of the node's usable cores: usable cores / local processes (>= 1)."""
    return max(1, usable_cores() // local_world_size())
