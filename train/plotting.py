"""Render a run's metrics.jsonl (written by the trainer) as loss / lr / throughput curves."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir) -> list[dict]:
    """Records of ``run_dir/metrics.jsonl`` by step; after a resume the latest record of a step wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    by_step = {}
    lines = path.read_text().splitlines()  # one read: a live run's file may grow meanwhile
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            # a run killed mid-write can leave a truncated last line; anything else is corruption
            if n == len(lines):
                continue
            raise ValueError(f"{path}:{n}: not valid JSON") from None
        by_step[rec["step"]] = rec
    if not by_step:
        raise ValueError(f"{path} holds no records yet")
    return [by_step[s] for s in sorted(by_step)]


def plot_run(run_dir, out=None) -> Path:
    """Write a PNG (losses, lr, pairs/s with data-wait %; SiamMask runs: mask IoU figures too) and
    return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    step = [r["step"] for r in recs]

    def col(k):
        return [float("nan") if r.get(k) is None else r[k] for r in recs]

    mask = "mask_iou_mean" in recs[-1]
    fig, axes = plt.subplots(4 if mask else 3, 1, figsize=(8, 12 if mask else 9), sharex=True)
    for k in ("total_loss", "cls_loss", "loc_loss") + (("mask_loss",) if mask else ()):
        axes[0].plot(step, col(k), label=k)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    axes[1].plot(step, col("lr"), drawstyle="steps-post")
    axes[1].set_ylabel("lr (schedule)")
    axes[1].set_yscale("log")
    axes[1].grid(alpha=0.3)
    axes[2].plot(step, col("pairs_per_s"), label="pairs/s")
    axes[2].set_ylabel("pairs/s")
    axes[2].grid(alpha=0.3)
    wait = axes[2].twinx()
    wait.plot(step, [100 * v for v in col("data_wait_frac")], color="tab:red", alpha=0.6, label="data wait %")
    wait.set_ylabel("data wait %", color="tab:red")
    if mask:
        for k, label in (("mask_iou_mean", "mean IoU"), ("mask_iou_at_5", "IoU > 0.5"), ("mask_iou_at_7", "IoU > 0.7")):
            axes[3].plot(step, col(k), label=label)
        axes[3].set_ylabel("mask (positive locations)")
        axes[3].set_ylim(0, 1)
        axes[3].legend()
        axes[3].grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    skipped = recs[-1].get("skipped_steps", 0)
    fig.suptitle(f"{Path(run_dir).name}: {step[-1]} steps, {skipped} skipped")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
