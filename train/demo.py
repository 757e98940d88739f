"""The embedded end-to-end demo: synthetic raw data → LMDB shards → a short training run →
evaluation of the trained model next to two baselines (a static box, the untrained network).

Everything is written under one work folder (default ``runs/demo``) that the demo owns; a rerun
starts afresh. ``tools/demo.py`` is the command-line entry point.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.fileio import write_json

from .config import load_config

MARKER = "DEMO_WORKDIR"  # file that marks a folder as the demo's own (safe to replace)
SIZES = {"VID": (24, 40), "GOT10K": (24, 40), "LASOT": (12, 40), "YTB": (12, 24), "COCO": (160, 1), "DET": (160, 1)}


def stage(log, title: str):
    log(f"\n== {title}")
    return time.perf_counter()


def log_verdict(log, timings: dict, beats: bool) -> None:
    """The summary's last lines: the total time and whether the trained model beats both baselines."""
    log(f"   total time: {sum(timings.values()) / 60:.1f} min")
    log("   verdict: " + ("the trained model beats both baselines" if beats
                          else "the trained model does NOT beat both baselines"))


def prepare_work(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).is_file():
            raise FileExistsError(f"{work} exists and is not a demo work folder; choose another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("written by tools/demo.py; deleted and rewritten on every demo run\n")


def run_demo(work="runs/demo", cfg_path="configs/demo_cpu.yaml", opts=(), seed: int = 0, device: str = "cpu",
             workers: int | None = None, scale: float = 1.0, log=print) -> dict:
    """Run the whole demo; returns a summary dict (also written to ``<work>/demo_summary.json``)."""
    from pipeline.ingest import build_dataset
    from pipeline.shards import CONFIG_TO_FOLDER
    from pipeline.synthetic import DEFAULTS, make_dataset, make_eval

    from track.ope import evaluate
    from track.snapshots import make_trackers
    from .trainer import Trainer

    work = Path(work)
    cfg = load_config(cfg_path, opts)
    workers = workers or os.cpu_count() or 1
    prepare_work(work)
    timings = {}

    t = stage(log, "1/4 synthetic raw datasets (official layouts)")
    folders = [CONFIG_TO_FOLDER[name] for name in cfg.DATASET.NAMES]
    for i, name in enumerate(folders):
        videos, frames = SIZES[name]
        info = make_dataset(name, work / "raw" / name, videos=max(2, int(videos * scale)), frames=frames,
                            seed=seed + i)
        log(f"   {name}: {work / 'raw' / name} ({info['seconds']:.1f} s)")
    timings["raw_s"] = time.perf_counter() - t

    t = stage(log, "2/4 crop into LMDB shards (tools/build_lmdb.py)")
    shards = work / "shards"
    for name in folders:
        report = build_dataset(name, root=work / "raw" / name, out_root=shards, workers=workers, progress=True)
        counts = report.get("counts", {})
        log(f"   {name}: {counts}")
    timings["shards_s"] = time.perf_counter() - t

    t = stage(log, f"3/4 train {Path(cfg_path).name} on {device} (train/run.py)")
    run_dir = work / "train"
    trainer = Trainer(cfg, shards=shards, out_dir=run_dir, device=device, resume=None)
    train_summary = trainer.fit()
    timings["train_s"] = time.perf_counter() - t

    t = stage(log, "4/4 evaluate on held-out synthetic sequences (tools/eval.py)")
    seqs = work / "eval_sequences"
    make_eval(seqs, seed=seed + 1000, frames=max(20, round(DEFAULTS["EVAL"][1] * scale)))
    final = run_dir / f"checkpoint_e{cfg.TRAIN.EPOCH}.pth"
    trackers = make_trackers(cfg, [final], baselines=("untrained", "static"), device=device, seed=seed)
    trackers = {("trained" if k == final.stem else k): v for k, v in trackers.items()}
    scores = evaluate(trackers, seqs, "otb", out_dir=work / "eval", plot=True, per_sequence=False, log=log)
    timings["eval_s"] = time.perf_counter() - t

    auc = {name: scores["trackers"][name]["overall"]["auc"] for name in trackers}
    beats = all(auc["trained"] > auc[b] for b in ("untrained", "static"))
    summary = {
        "work": str(work), "config": str(cfg_path), "device": device, "timings_s": timings,
        "train": {k: train_summary.get(k) for k in ("global_step", "pairs_per_s", "data_wait_frac", "skipped_steps",
                                                         "replaced_crops")},
        "curves_png": train_summary.get("curves"), "success_auc": auc, "trained_beats_baselines": beats,
        "eval_dir": str(work / "eval"),
    }
    write_json(work / "demo_summary.json", summary, indent=2)
    tr = summary["train"]
    log("\n== summary")
    log(f"   training: {tr['global_step']} steps, {tr['pairs_per_s']:.1f} pairs/s, "
        f"data wait {100 * tr['data_wait_frac']:.1f}% of step time, {tr['skipped_steps']} skipped steps, "
        f"{tr['replaced_crops']} replaced crops")
    log(f"   loss curves: {summary['curves_png']}")
    log("   success AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in auc.items()))
    log(f"   plots and report: {work / 'eval'}")
    log_verdict(log, timings, beats)
    return summary
