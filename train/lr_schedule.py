"""PySOT's per-epoch learning-rate schedules as pure functions, plus a tiny optimizer wrapper.

PySOT's lr is piecewise constant per epoch: a table ``lr_spaces`` (one value per epoch) built by
one of the schedule types below, optionally a warm-up table concatenated in front of it. A
parameter group's lr is ``lr_spaces[e] * group_initial_lr / start_lr`` where ``start_lr`` is
the main schedule's first value (for warm-up, PySOT's ``WarmUPScheduler`` uses the *normal*
schedule's first entry) and ``group_initial_lr`` is BASE_LR (or LAYERS_LR x BASE_LR).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = ["schedule_table", "build_lr_table", "EpochLR"]


def _log(epochs, start_lr=0.03, end_lr=5e-4):
    return np.logspace(math.log10(start_lr), math.log10(end_lr), epochs), start_lr


def _step(epochs, start_lr=0.01, end_lr=None, step=10, mult=0.1):
    if end_lr is not None:
        if start_lr is None:
            start_lr = end_lr / (mult ** (epochs // step))
        else:  # warm-up form: reach towards end_lr in epochs//step multiplicative steps
            mult = math.pow(end_lr / start_lr, 1.0 / (epochs // step))
    return start_lr * (mult ** (np.arange(epochs) // step)), start_lr


def _multi_step(epochs, start_lr=0.01, end_lr=None, steps=(10, 20, 30, 40), mult=0.5):
    if end_lr is not None:
        if start_lr is None:
            start_lr = end_lr / (mult ** len(steps))
        else:
            mult = math.pow(end_lr / start_lr, 1.0 / len(steps))
    lr = [0.0] * epochs
    lr[0] = start_lr
    for i in range(1, epochs):
        lr[i] = lr[i - 1] * (mult if i in steps else 1.0)
    return np.asarray(lr, dtype=np.float32), start_lr  # PySOT keeps this table in float32


def _linear(epochs, start_lr=0.01, end_lr=0.005):
    return np.linspace(start_lr, end_lr, epochs), start_lr


def _cos(epochs, start_lr=0.01, end_lr=0.005):
    index = np.arange(epochs).astype(np.float32)
    lr = end_lr + (start_lr - end_lr) * (1.0 + np.cos(index * np.pi / epochs)) * 0.5
    return lr.astype(np.float32), start_lr


_TYPES = {"log": _log, "step": _step, "multi-step": _multi_step, "linear": _linear, "cos": _cos}


def schedule_table(lr_type: str, kwargs: Mapping[str, Any], epochs: int) -> tuple[np.ndarray, float]:
    """One PySOT schedule: ``(lr per epoch, its start_lr)`` for ``epochs`` epochs.

    Raises ValueError naming the type or keyword if either is unknown.
    """
    if lr_type not in _TYPES:
        raise ValueError(f"unknown lr schedule TYPE {lr_type!r} (PySOT offers {sorted(_TYPES)})")
    fn = _TYPES[lr_type]
    allowed = set(fn.__code__.co_varnames[1 : fn.__code__.co_argcount])
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"lr schedule {lr_type!r}: unknown KWARGS {sorted(unknown)} (allowed: {sorted(allowed)})")
    if epochs < 1:
        raise ValueError(f"lr schedule {lr_type!r} needs at least one epoch, got {epochs}")
    table, start = fn(epochs, **dict(kwargs))
    return np.asarray(table), float(start)


def build_lr_table(train_cfg) -> tuple[np.ndarray, float]:
    """``(lr_spaces, start_lr)`` for cfg.TRAIN as PySOT's ``build_lr_scheduler(epochs=TRAIN.EPOCH)``."""
    epochs = int(train_cfg.EPOCH)
    if train_cfg.LR_WARMUP.WARMUP:
        w = int(train_cfg.LR_WARMUP.EPOCH)
        if not 0 < w < epochs:
            raise ValueError(f"TRAIN.LR_WARMUP.EPOCH={w} must lie in (0, TRAIN.EPOCH={epochs})")
        warm, _ = schedule_table(train_cfg.LR_WARMUP.TYPE, train_cfg.LR_WARMUP.KWARGS, w)
        normal, _ = schedule_table(train_cfg.LR.TYPE, train_cfg.LR.KWARGS, epochs - w)
        return np.concatenate([warm, normal]), float(normal[0])
    return schedule_table(train_cfg.LR.TYPE, train_cfg.LR.KWARGS, epochs)


class EpochLR:
    """Sets every param group's lr for an epoch: ``table[e] * group['initial_lr'] / start_lr``.

    Like torch's LambdaLR it records ``initial_lr`` in each group on construction; state is just
    the current epoch (the table is rebuilt from the config).
    """

    def __init__(self, optimizer, train_cfg):
        self.optimizer = optimizer
        self.table, self.start_lr = build_lr_table(train_cfg)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.epoch = -1

    def lr_at(self, epoch: int) -> float:
        """The schedule value for ``epoch`` (PySOT's ``get_cur_lr``)."""
        if not 0 <= epoch < len(self.table):
            raise IndexError(f"epoch {epoch} outside the schedule's {len(self.table)} epochs")
        return float(self.table[epoch])

    def set_epoch(self, epoch: int) -> None:
        value = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group["initial_lr"] / self.start_lr
        self.epoch = epoch

    def group_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping) -> None:
        if state["epoch"] >= 0:
            self.set_epoch(int(state["epoch"]))
