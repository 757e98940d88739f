"""Checks run before any training step, each failing with a message that names the bad input."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from model.checkpoint import read_state_dict
from pipeline.crop import shard_crop_geometry
from pipeline.fileio import free_bytes
from pipeline.shards import ShardError, ShardReader, shard_dir

__all__ = ["PreflightError", "check_shards", "check_batch", "check_checkpoint_fits", "check_compile",
           "triton_c_compiler", "shards_identity", "check_same_shards", "checkpoint_bytes", "check_free_space"]


class PreflightError(ValueError):
    """The run cannot start; the message says which file, key or value is wrong."""


def check_shards(cfg, shards_root) -> dict:
    """Every dataset in DATASET.NAMES has a complete, non-empty shard folder whose crops fit the
    config (`pipeline.crop.shard_crop_geometry`, the check the sampler makes too).

    Returns {name: number of crops}.
    """
    root = Path(shards_root)
    if not root.is_dir():
        raise PreflightError(f"--shards {root} does not exist; build shards with tools/build_lmdb.py")
    counts = {}
    for name in cfg.DATASET.NAMES:
        folder = shard_dir(root, name)
        try:
            reader = ShardReader(folder)
        except ShardError as err:
            raise PreflightError(f"DATASET.NAMES lists {name}: {err}") from None
        try:
            if len(reader) == 0:
                raise PreflightError(f"shards {folder} ({name}) hold no crops; rebuild them with tools/build_lmdb.py")
            try:
                shard_crop_geometry(reader.meta.get("crop"), cfg, f"{folder} (dataset {name})")
            except ValueError as err:
                raise PreflightError(str(err)) from None
            counts[name] = len(reader)
        finally:
            reader.close()
    return counts


def shards_identity(cfg, shards_root) -> dict:
    """{'root': resolved --shards, 'datasets': {name: digest of its index's counts and shard digests}}:
    what a checkpoint records of the data it was trained on (another build of the same raw data
    with the same parameters has the same digests). Call after :func:`check_shards`."""
    identity = {}
    for name in cfg.DATASET.NAMES:
        reader = ShardReader(shard_dir(shards_root, name))
        try:
            recorded = json.dumps([reader.meta["counts"], reader.meta["shards"]], sort_keys=True, default=str)
        finally:
            reader.close()
        identity[name] = hashlib.sha256(recorded.encode()).hexdigest()[:16]
    return {"root": str(Path(shards_root).resolve()), "datasets": identity}


def check_same_shards(recorded: dict, current: dict, path) -> str | None:
    """A resumed run must see the data its checkpoint was trained on: PreflightError if a dataset's
    shards differ; a line for the log if only the folder moved; None if nothing changed."""
    if recorded == current:
        return None
    old, new = recorded.get("datasets", {}), current["datasets"]
    if old != new:
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        raise PreflightError(f"--resume: {path} was trained on --shards {recorded.get('root')}, this command gives "
                             f"--shards {current['root']}, whose {', '.join(names)} shards differ (another build, other "
                             f"data or other DATASET.NAMES); resume with --shards {recorded.get('root')}, or start a "
                             f"new run from its weights with --opts TRAIN.PRETRAINED={path}")
    return f"--resume: the shards moved from {recorded.get('root')} to {current['root']} (same content)"


def checkpoint_bytes(model, momentum: bool) -> int:
    """About the size of the next training checkpoint: weights and buffers, SGD's momentum buffer of
    each trainable parameter, and 64 KiB for the rest (optimizer groups, loader and RNG states,
    config, meters)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) if momentum else 0
    return weights + moments + (64 << 10)


def check_free_space(out_dir, size: int, epochs_left: int) -> str | None:
    """PreflightError if the run folder's disk cannot take one checkpoint of ``size`` bytes (the
    first save would fail, maybe hours in); a warning line if it cannot take every checkpoint the
    run still writes (checkpoint_eN per epoch, latest.pth, and one being written); else None."""
    free = free_bytes(out_dir)
    latest = Path(out_dir) / "latest.pth"
    total = size * (epochs_left + (0 if latest.exists() else 1) + 1)
    mib = 2 ** 20
    if free < size:
        raise PreflightError(f"{out_dir}: {free / mib:.0f} MiB free, but one checkpoint takes about {size / mib:.0f} "
                             f"MiB; free some space or choose another --out")
    if free < total:
        return (f"{out_dir}: {free / mib:.0f} MiB free holds fewer than the {epochs_left} epoch checkpoints and "
                f"latest.pth this run writes (about {size / mib:.0f} MiB each, {total / mib:.0f} MiB in all)")
    return None


def check_batch(cfg, world_size: int) -> int:
    """Steps per epoch (PySOT: VIDEOS_PER_EPOCH // (BATCH_SIZE x world)); errors if that is < 1."""
    b = cfg.TRAIN.BATCH_SIZE
    if b < 1:
        raise PreflightError(f"TRAIN.BATCH_SIZE={b} must be at least 1 (it is per process, as in PySOT)")
    steps = cfg.DATASET.VIDEOS_PER_EPOCH // (b * world_size)
    if steps < 1:
        raise PreflightError(
            f"DATASET.VIDEOS_PER_EPOCH={cfg.DATASET.VIDEOS_PER_EPOCH} is less than one global batch "
            f"(TRAIN.BATCH_SIZE={b} x {world_size} processes = {b * world_size}); raise it or lower the batch")
    return steps


def check_checkpoint_fits(ckpt: dict, model, cfg, path) -> None:
    """The checkpoint's state_dict has exactly the model's keys and shapes (same architecture)."""
    if "state_dict" not in ckpt:
        raise PreflightError(f"{path} has no 'state_dict' (keys: {sorted(ckpt)}); is it a training checkpoint?")
    arc = ckpt.get("meta_arc")
    if arc is not None and arc != cfg.META_ARC:
        raise PreflightError(f"{path} was trained as META_ARC={arc!r}, the config says {cfg.META_ARC!r}")
    want = model.state_dict()
    got = read_state_dict(ckpt, str(path))
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if tuple(want[k].shape) != tuple(got[k].shape))
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {tuple(got[k].shape)} "
                          f"vs model {tuple(want[k].shape)})")
        raise PreflightError(f"{path} does not fit the model built from the config ({cfg.META_ARC}): "
                             + "; ".join(detail) + " - a checkpoint of another architecture?")


def check_compile(device_type: str) -> None:
    """TRAIN.COMPILE needs inductor's toolchain: a C++ compiler for CPU kernels, triton for CUDA ones.

    Without this check a missing toolchain only shows up at the first training step, as a long
    backend-compiler traceback.
    """
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise PreflightError("TRAIN.COMPILE=True on CUDA needs triton (pip install triton); "
                                 "or set TRAIN.COMPILE=False")
        if triton_c_compiler() is None:
            raise PreflightError("TRAIN.COMPILE=True on CUDA needs a host C compiler for triton's launchers "
                                 "(none of $CC, gcc, clang found; install gcc); or set TRAIN.COMPILE=False")
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # inductor internals moved: leave the check to torch itself
        return
    try:
        get_cpp_compiler()
    except Exception as err:  # torch raises InvalidCxxCompiler when no compiler in its search list runs
        raise PreflightError(f"TRAIN.COMPILE=True on CPU needs a C++ compiler for inductor's kernels (none found: "
                             f"{type(err).__name__}; install g++ or point the CXX environment variable at one); "
                             f"or set TRAIN.COMPILE=False") from None


def triton_c_compiler() -> str | None:
    """The host C compiler triton builds its kernel launchers with, searched as triton does on
    Linux ($CC, else gcc, else clang); None when there is none."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("clang")
