"""Training telemetry: interval meters, metrics.jsonl, log file, optional TensorBoard, verdicts."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

__all__ = ["IntervalMeter", "DeviceWaits", "MetricsWriter", "setup_logger", "bound_verdict", "INPUT_BOUND_FRAC"]

# Above this fraction of step time spent waiting for data, an epoch is called input-bound (the
# project target is < 2% data wait on a GPU).
INPUT_BOUND_FRAC = 0.02


class IntervalMeter:
    """Sums since the last ``reset``: step timings on the host, losses on the device; data wait on
    the host clock on the CPU, on the device timeline on CUDA (:class:`DeviceWaits`, ``add_wait``).

    ``keys``: what a step's values are (default SiamRPN's three losses; SiamMask adds its mask
    loss and IoU figures). ``update`` takes a step's contribution as a device tensor, float64
    ``[*values, applied]`` (zeros for a skipped step), and adds it without a host sync; ``means``
    reads the sums once (each value's mean over the applied steps). Summed in float64 in step
    order, so a resumed meter (``state_dict``) continues bit for bit.
    """

    LOSSES = ("total_loss", "cls_loss", "loc_loss")

    def __init__(self, keys=LOSSES):
        self.keys = tuple(keys)
        self.reset()

    def reset(self):
        self.steps = 0
        self.pairs = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self.sums = None  # device float64 [*values of self.keys, applied steps]
        self.extra = {}  # optional host values per applied step (grad norms with TRAIN.LOG_GRADS): key -> [sum, count]

    def update(self, contrib, pairs: int, wait_s: float, step_s: float, extra: dict | None = None):
        self.steps += 1
        self.pairs += pairs
        self.wait_s += wait_s
        self.step_s += step_s
        if self.sums is None:
            self.sums = torch.zeros_like(contrib)
        self.sums += contrib
        for k, v in (extra or {}).items():  # counted per key: not every step need carry every key
            acc = self.extra.setdefault(k, [0.0, 0])
            acc[0] += v
            acc[1] += 1

    def add_wait(self, seconds: float) -> None:
        """Data wait measured after the steps it belongs to (:class:`DeviceWaits`, settled once per interval)."""
        self.wait_s += seconds

    def loss_sums(self) -> list[float]:
        """[*values, applied steps] (one device-to-host read)."""
        return self.sums.tolist() if self.sums is not None else [0.0] * (len(self.keys) + 1)

    def means(self) -> dict:
        *losses, valid = self.loss_sums()
        out = {k: (v / valid if valid else math.nan) for k, v in zip(self.keys, losses)}
        out.update({k: total / n for k, (total, n) in sorted(self.extra.items())})
        out["pairs_per_s"] = self.pairs / self.step_s if self.step_s > 0 else math.nan
        out["data_wait_frac"] = self.wait_s / self.step_s if self.step_s > 0 else math.nan
        return out

    def state_dict(self) -> dict:
        """Plain numbers (weights_only-safe) for a checkpoint taken mid-interval."""
        return {"steps": self.steps, "pairs": self.pairs, "wait_s": self.wait_s, "step_s": self.step_s,
                "sums": self.loss_sums(), "extra": {k: list(v) for k, v in self.extra.items()}}

    def load_state_dict(self, state: dict, device) -> None:
        self.reset()
        self.steps, self.pairs = int(state["steps"]), int(state["pairs"])
        self.wait_s, self.step_s = float(state["wait_s"]), float(state["step_s"])
        self.sums = torch.tensor(state["sums"], dtype=torch.float64, device=device)
        self.extra = {k: [float(v[0]), int(v[1])] for k, v in state["extra"].items()}


class DeviceWaits:
    """Data wait on the device timeline (CUDA): for each batch, how long the training stream waits
    from the end of the work queued before the batch was asked for until the batch is ready.

    ``asked()`` records an event on the stream before the loader is asked; ``got(asked, ready)``
    pairs it with the batch's ready point: the loader's ``ready_event`` (recorded where the stream
    has waited for DALI's outputs, before the copies and label kernels) or, without one, an event
    recorded when the batch is handed over. The stream sits idle between the two only when the
    data (or the host feeding it) is late; the GPU work of the loader itself (DALI's kernels, the
    copies, the label kernels) is compute shared with training, not waiting, and is not counted.
    The host never waits per step: ``settle()`` reads the events, once per interval.
    """

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.current_stream(device)
        self._pending: list = []

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    def asked(self):
        return self._event()

    def got(self, asked, ready=None) -> None:
        self._pending.append((asked, ready if ready is not None else self._event()))

    def settle(self) -> float:
        """Seconds waited by the batches got since the last call (waits for their ready points)."""
        if not self._pending:
            return 0.0
        self._pending[-1][1].synchronize()
        seconds = sum(a.elapsed_time(r) for a, r in self._pending) / 1e3
        self._pending.clear()
        return seconds


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
    """Logger 'train' to stderr (rank 0 only) and ``run_dir/train.log``.

    On rank 0 the warnings of the data pipeline (logger ``pipeline``: replaced crops, damaged
    shards) also go to ``train.log``; they still reach stderr through the root logger.
    """
    log = logging.getLogger(f"train.rank{rank}")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False
    pipeline_log = logging.getLogger("pipeline")
    for owner in (log, pipeline_log):
        for h in list(owner.handlers):
            if owner is log or getattr(h, "run_log", False):
                owner.removeHandler(h)
                h.close()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if run_dir is not None and rank == 0:
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)
        pipe_fh = logging.FileHandler(Path(run_dir) / "train.log")
        pipe_fh.setFormatter(logging.Formatter("[%(asctime)s] %(name)s: %(message)s", "%H:%M:%S"))
        pipe_fh.setLevel(logging.WARNING)
        pipe_fh.run_log = True
        pipeline_log.addHandler(pipe_fh)
    return log


def bound_verdict(epoch: int, pairs: int, wait_s: float, step_s: float) -> str:
    """One line: input-bound or compute-bound for an epoch, with the numbers behind it."""
    frac = wait_s / step_s if step_s > 0 else 0.0
    rate = pairs / step_s if step_s > 0 else 0.0
    kind = "INPUT-BOUND" if frac > INPUT_BOUND_FRAC else "compute-bound"
    return (f"epoch {epoch + 1}: {kind}: data wait {100 * frac:.1f}% of step time "
            f"({wait_s:.1f}s of {step_s:.1f}s, threshold {100 * INPUT_BOUND_FRAC:.0f}%), {rate:.1f} pairs/s")
