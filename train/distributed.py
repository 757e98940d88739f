"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

A plain ``python train/run.py`` (no torchrun variables) is a single-process run: rank 0 of 1,
with no process group at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .preflight import PreflightError

__all__ = ["DistContext", "init_distributed", "shutdown_distributed"]


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


def init_distributed(device: str) -> DistContext:
    """Read torchrun's environment, pick this rank's device, init the process group if world > 1.

    ``device`` is 'cuda' or 'cpu'. NCCL on CUDA, gloo on CPU. Raises PreflightError for
    'cuda' without a visible GPU.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be 'cuda' or 'cpu', got {device!r}")
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PreflightError("--device cuda was requested but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu")
        n = torch.cuda.device_count()
        if local >= n:
            raise PreflightError(f"LOCAL_RANK={local} but only {n} GPU(s) are visible on this node")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                **({"device_id": dev} if device == "cuda" else {}))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
