"""Training telemetry: interval meters, metrics.jsonl, log file, optional TensorBoard, verdicts."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

__all__ = ["IntervalMeter", "MetricsWriter", "setup_logger", "bound_verdict", "INPUT_BOUND_FRAC"]

# Above this fraction of step time spent waiting for data, an epoch is called input-bound (the
# project target is < 2% data wait on a GPU).
INPUT_BOUND_FRAC = 0.02


class IntervalMeter:
    """Sums of losses and times since the last ``reset``; losses only over non-skipped steps."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps = 0
        self.valid = 0
        self.pairs = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self.loss = {"total_loss": 0.0, "cls_loss": 0.0, "loc_loss": 0.0}
        self.extra = {}  # optional per-step values (grad norms with TRAIN.LOG_GRADS): key -> [sum, count]

    def update(self, losses: dict | None, pairs: int, wait_s: float, step_s: float):
        self.steps += 1
        self.pairs += pairs
        self.wait_s += wait_s
        self.step_s += step_s
        if losses is not None:
            self.valid += 1
            for k in self.loss:
                self.loss[k] += losses[k]
            for k in losses.keys() - self.loss.keys():  # counted per key: not every step need carry every key
                acc = self.extra.setdefault(k, [0.0, 0])
                acc[0] += losses[k]
                acc[1] += 1

    def means(self) -> dict:
        out = {k: (v / self.valid if self.valid else math.nan) for k, v in self.loss.items()}
        out.update({k: total / n for k, (total, n) in sorted(self.extra.items())})
        out["pairs_per_s"] = self.pairs / self.step_s if self.step_s > 0 else math.nan
        out["data_wait_frac"] = self.wait_s / self.step_s if self.step_s > 0 else math.nan
        return out


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard if installed."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._f = open(self.path, "a", buffering=1)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
        except Exception:
            self._tb = None

    @property
    def tensorboard(self) -> bool:
        """True when scalars also go to TensorBoard (``tb/`` in the run folder)."""
        return self._tb is not None

    def tensorboard_scalars(self, scalars: dict, step: int) -> None:
        """Scalars for TensorBoard only (too many for metrics.jsonl, e.g. LOG_GRADS per parameter)."""
        if self._tb is not None:
            for k, v in scalars.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def setup_logger(run_dir: Path | None, rank: int) -> logging.Logger:
    """Logger 'train' to stderr (rank 0 only) and ``run_dir/train.log``."""
    log = logging.getLogger(f"train.rank{rank}")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if run_dir is not None and rank == 0:
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


def bound_verdict(epoch: int, pairs: int, wait_s: float, step_s: float) -> str:
    """One line: input-bound or compute-bound for an epoch, with the numbers behind it."""
    frac = wait_s / step_s if step_s > 0 else 0.0
    rate = pairs / step_s if step_s > 0 else 0.0
    kind = "INPUT-BOUND" if frac > INPUT_BOUND_FRAC else "compute-bound"
    return (f"epoch {epoch + 1}: {kind}: data wait {100 * frac:.1f}% of step time "
            f"({wait_s:.1f}s of {step_s:.1f}s, threshold {100 * INPUT_BOUND_FRAC:.0f}%), {rate:.1f} pairs/s")
