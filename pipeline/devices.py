"""Which device and how many CPU threads a process uses: one answer for the trainer, the loader,
DALI and the benchmarks.

Under torchrun every process of a node must work on its own GPU (``cuda:LOCAL_RANK``) and take
its share of the node's cores; a device given without an index means the current CUDA device of
the process (which the trainer sets to ``cuda:LOCAL_RANK``), never silently GPU 0.
"""
from __future__ import annotations

import os
import re

import torch

__all__ = ["resolve_device", "resolve_device_on", "dali_device_id", "usable_cores",
           "local_world_size", "cores_per_process", "jpeg_hardware_share", "dali_threads",
           "HARDWARE_JPEG_CARDS", "GPU_DALI_THREADS", "DALI_HW_DECODER_LOAD"]

# Data-centre GPUs with hardware JPEG decoder engines (NVJPG) that nvJPEG's hardware backend uses:
# Ampere A100/A800/A30, Hopper H100/H800/H200/H20/GH200, Blackwell B100/B200/B300 (GB200/GB300).
HARDWARE_JPEG_CARDS = re.compile(r"\b(A100|A800|A30|H100|H800|H200|H20|GH200|B100|B200|B300|GB200|GB300)\b")
DALI_HW_DECODER_LOAD = 0.65  # DALI's own default share for the hardware decoder
GPU_DALI_THREADS = 4         # cap of the default DALI threads per process on the GPU path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device_on(device, current: int, visible: int) -> torch.device:
    """`resolve_device` for a process whose current CUDA device is `current` and which sees
    `visible` GPUs (a pure function: testable without a GPU).

    'cpu' -> cpu; 'cuda' -> cuda:current; 'cuda:N' -> cuda:N.  ValueError for other device
    types and for an index outside [0, visible).
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    index = int(current) if dev.index is None else dev.index
    if not 0 <= index < visible:
        raise ValueError(f"device {device!r}: GPU {index} does not exist ({visible} visible)")
    return torch.device("cuda", index)


def resolve_device(device) -> torch.device:
    """``device`` ('cpu', 'cuda', 'cuda:N' or a torch.device) with an explicit index for CUDA.

    'cuda' without an index is the process's current CUDA device (``torch.cuda.current_device()``,
    which ``torch.cuda.set_device`` and the trainer set to LOCAL_RANK).  Raises ValueError for
    other device types, for CUDA without a visible GPU and for an index that does not exist.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return resolve_device_on(dev, 0, 0)
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    current = torch.cuda.current_device() if dev.index is None else 0
    return resolve_device_on(dev, current, torch.cuda.device_count())


def dali_device_id(device: torch.device) -> int | None:
    """DALI's ``device_id`` for a resolved device: None on the CPU (a CPU-only pipeline that
    never touches CUDA), the GPU's index on CUDA (DALI and torch number the visible GPUs alike)."""
    if device.type == "cpu":
        return None
    if device.index is None:
        raise ValueError(f"{device} has no GPU index: resolve it with resolve_device first")
    return int(device.index)


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


def jpeg_hardware_share(device_name: str | None, configured: float) -> tuple[float, str]:
    """(share of the JPEGs for the GPU's hardware decoder, why) for DALI's ``hw_decoder_load``.

    ``configured`` >= 0 (TRAIN.LOADER_HW_DECODER_LOAD) wins.  Else (negative: per card): 1.0 on
    cards with hardware JPEG engines, because every JPEG the hardware does not take is
    Huffman-decoded on the host by nvJPEG's hybrid path (at 10k pairs/s, 35% of 20k JPEGs/s of
    511 crops is several cores); DALI's default 0.65 elsewhere, where the option has no effect.
    """
    if configured >= 0:
        if configured > 1:
            raise ValueError(f"TRAIN.LOADER_HW_DECODER_LOAD={configured} must lie in [0, 1] "
                             f"(or be negative: chosen per card)")
        return float(configured), f"TRAIN.LOADER_HW_DECODER_LOAD={configured:g} (config)"
    if device_name and HARDWARE_JPEG_CARDS.search(device_name.upper()):
        return 1.0, (f"{device_name} has hardware JPEG decoders: every JPEG goes there, none to "
                     f"nvJPEG's host Huffman path")
    return DALI_HW_DECODER_LOAD, (f"{device_name or 'this GPU'}: no hardware JPEG decoder known for "
                                  f"this card: DALI's default {DALI_HW_DECODER_LOAD} (no effect without one)")


def dali_threads(configured: int, on_gpu: bool) -> tuple[int, str]:
    """(DALI worker threads per process, why).

    ``configured`` > 0 (TRAIN.LOADER_DALI_THREADS or an explicit argument) wins.  Else on the GPU
    path at most GPU_DALI_THREADS (4) within the process's share of the cores: decoding and pixel
    work run on the GPU, the threads only parse JPEGs and hand inputs over, and more of them
    contend with the training process's own host threads.  On the CPU path one thread more than
    the process's cores (measured best: with exactly one per core DALI's pool leaves a core idle
    at every operator's end: 1.75 vs 1.86 cores busy, ~10% more pairs/s on 2 cores).
    """
    if configured > 0:
        return int(configured), f"{configured} DALI threads (TRAIN.LOADER_DALI_THREADS or the caller)"
    share = cores_per_process()
    if on_gpu:
        n = min(GPU_DALI_THREADS, share)
        return n, f"GPU path: min({GPU_DALI_THREADS}, this process's {share} cores)"
    return share + 1, f"CPU path: this process's {share} cores + 1"
