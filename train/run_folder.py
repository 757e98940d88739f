"""The run folder (``--out``): never overwrite an earlier run by accident, find the checkpoint to
resume from, and cut the per-step record files back to a resumed step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.fileio import atomic_write

from .checkpoint import CheckpointError, load_checkpoint
from .preflight import PreflightError

__all__ = ["RUN_FILES", "earlier_run_files", "refuse_or_set_aside", "put_back", "discard", "ResumePoint",
           "find_resume_checkpoint", "global_step_of", "truncate_records"]

_EPOCH_CKPT = re.compile(r"^checkpoint_e(\d+)\.pth$")
# What a training run writes into its folder (train.log and the plot included); --overwrite removes only these.
RUN_FILES = ("latest.pth", "checkpoint_e*.pth", "metrics.jsonl", "summary.json", "train.log", "curves.png",
             "batches_rank*.jsonl", "tb")
# The files that show an earlier run worth keeping: something to resume or its result. A run that
# stopped before its first checkpoint (a train.log, metrics records) leaves nothing to continue: a
# fresh start in its folder drops its records (Trainer._cut_records_after).
_EVIDENCE = ("latest.pth", "checkpoint_e*.pth", "summary.json")


def earlier_run_files(out_dir: Path) -> list[Path]:
    """Files in ``out_dir`` that show an earlier training run."""
    out_dir = Path(out_dir)
    return sorted(p for pattern in _EVIDENCE for p in out_dir.glob(pattern))


def _run_files(out_dir: Path) -> list[Path]:
    return sorted(p for pattern in RUN_FILES for p in Path(out_dir).glob(pattern))


def refuse_or_set_aside(out_dir: Path, overwrite: bool) -> Path | None:
    """For a fresh run: raise PreflightError if ``out_dir`` holds an earlier run, unless
    ``overwrite``: then that run's files (only :data:`RUN_FILES`) move into a hidden folder,
    returned, which :func:`discard` deletes once the new run has started and :func:`put_back`
    restores if it fails to start (a typo in the command must not cost the earlier run)."""
    found = earlier_run_files(out_dir)
    if not found:
        return None
    if not overwrite:
        names = ", ".join(p.name for p in found[:6]) + (" ..." if len(found) > 6 else "")
        raise PreflightError(f"{out_dir} holds an earlier run ({names}); continue it with --resume, or start "
                             f"afresh with --overwrite (deletes that run's checkpoints, logs and metrics)")
    aside = Path(out_dir) / f".overwritten-run.{os.getpid()}"
    aside.mkdir()
    for p in _run_files(out_dir):
        p.rename(aside / p.name)
    return aside


def put_back(aside: Path) -> None:
    """Undo :func:`refuse_or_set_aside` (files the failed start wrote are replaced)."""
    for p in sorted(Path(aside).iterdir()):
        target = Path(aside).parent / p.name
        if target.is_dir() and p.is_dir():
            shutil.rmtree(target)
        p.replace(target)
    Path(aside).rmdir()


def discard(aside: Path) -> int:
    """Delete the set-aside earlier run; returns how many files and folders it held."""
    count = len(list(Path(aside).iterdir()))
    shutil.rmtree(aside)
    return count


def global_step_of(ckpt: dict, steps_per_epoch: int) -> int:
    """The global step a checkpoint resumes at (PySOT's files carry only the epoch)."""
    if "global_step" in ckpt:
        return int(ckpt["global_step"])
    return int(ckpt.get("epoch", 0)) * steps_per_epoch + int(ckpt.get("epoch_step", 0))


@dataclass
class ResumePoint:
    path: Path
    checkpoint: dict
    global_step: int
    passed_over: list = field(default_factory=list)  # (path, why) of newer-looking files not used


def find_resume_checkpoint(out_dir: Path, steps_per_epoch: int) -> ResumePoint:
    """The newest checkpoint in ``out_dir`` that loads: ``latest.pth`` or the highest
    ``checkpoint_eN.pth`` that loads, whichever has the higher global step (``latest.pth`` on a tie).

    A ``latest.pth`` that is missing, unreadable (killed mid-copy, disk full) or older than an
    epoch checkpoint is passed over and reported. Raises PreflightError if nothing loads.
    """
    out_dir = Path(out_dir)
    epochs = sorted((p for p in out_dir.glob("checkpoint_e*.pth") if _EPOCH_CKPT.match(p.name)),
                    key=lambda p: int(_EPOCH_CKPT.match(p.name)[1]), reverse=True)
    best: ResumePoint | None = None
    passed = []
    latest = out_dir / "latest.pth"
    for path in [latest] + epochs:
        if path == latest and not latest.exists():
            passed.append((latest, "it does not exist"))
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            passed.append((path, str(err)))
            continue
        step = global_step_of(ckpt, steps_per_epoch)
        if best is None or step > best.global_step:
            if best is not None:
                passed.append((best.path, f"global step {best.global_step} is older than {path.name}'s {step}"))
            best = ResumePoint(path, ckpt, step)
        else:
            passed.append((path, f"global step {step} is not newer than {best.path.name}'s {best.global_step}"))
        if path != latest:
            break  # older epoch checkpoints are behind this one
    if best is None:
        if not epochs and not latest.exists():
            raise PreflightError(f"--resume: nothing to resume in {out_dir} (no latest.pth or checkpoint_e*.pth)")
        why = "; ".join(f"{p.name}: {w}" for p, w in passed)
        raise PreflightError(f"--resume: no checkpoint in {out_dir} loads ({why})")
    best.passed_over = passed
    return best


def truncate_records(path: Path, last_step: int) -> int:
    """Drop the JSON-lines records of ``path`` whose "step" is after ``last_step`` (written by the
    run after the checkpoint it resumes from); returns how many. Atomic rewrite; absent file: 0."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut by the kill
        if step is not None and step <= last_step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write(path, "".join(line + "\n" for line in kept))
    return dropped
