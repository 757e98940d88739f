"""The mask demo (``tools/demo.py --mask``): synthetic COCO and YouTube-VOS with masks → LMDB shards →
SiamMask's base stage → its refine stage → DAVIS-layout evaluation of the trained model next to
two baselines: the same network untrained, and the trained model's boxes filled as masks.

The trained model must beat both: the untrained network says the pipeline learned something, the
box baseline says the masks are worth more than the boxes they come from. Everything is written
under one work folder (default ``runs/demo_mask``), replaced on every run, as ``train/demo.py`` does.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.fileio import write_json

from .config import load_config
from .demo import log_verdict, prepare_work, stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE_CFG = CONFIGS / "demo_mask_base_cpu.yaml"
REFINE_CFG = CONFIGS / "demo_mask_refine_cpu.yaml"
# (videos or images, frames per video) at scale 1
SIZES = {"YTBVOS": (24, 20), "COCO": (96, 1), "DAVIS": (8, 24)}
SPLIT = "2017/val"
BASELINES = ("untrained", "box")


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (BGR) with each object id of ``labels`` tinted in its palette colour and outlined."""
    out = image.astype(np.float32)
    for k in np.unique(labels[labels > 0]):
        inside = labels == k
        colour = palette[k][::-1].astype(np.float32)  # palette is RGB
        out[inside] = (1 - alpha) * out[inside] + alpha * colour
        contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(float(c) for c in colour), 1)
    return out.clip(0, 255).astype(np.uint8)


def write_overlays(sequences, columns: dict, out_dir: Path, frames_per_seq: int = 3) -> list:
    """One PNG per sequence: rows are frames spread over the sequence, columns the ground truth and
    each result folder of ``columns`` ({title: folder holding <seq>/<frame>.png})."""
    from track.vos.png import DAVIS_PALETTE, read_labels

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for seq in sequences:
        picks = np.linspace(1, len(seq) - 1, frames_per_seq).round().astype(int)
        rows = []
        for i in picks:
            image = seq.read_frame(int(i))
            cells = [overlay(image, seq.labels(int(i)), DAVIS_PALETTE)]
            for folder in columns.values():
                cells.append(overlay(image, read_labels(folder / seq.name / f"{seq.frame_ids[i]}.png"), DAVIS_PALETTE))
            rows.append(np.hstack(cells))
        grid = np.vstack(rows)
        header = np.full((24, grid.shape[1], 3), 255, np.uint8)
        width = image.shape[1]
        for k, title in enumerate(("ground truth", *columns)):
            cv2.putText(header, title, (k * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        path = out_dir / f"{seq.name}.png"
        cv2.imwrite(str(path), np.vstack([header, grid]))
        written.append(path)
    return written


def _train(cfg, shards: Path, out: Path, device: str) -> dict:
    """Train one stage; its summary plus the last logged mean mask IoU of the training pairs."""
    from .trainer import Trainer

    summary = Trainer(cfg, shards=shards, out_dir=out, device=device, resume=None).fit()
    records = (out / "metrics.jsonl").read_text().splitlines()
    summary["mask_iou_mean"] = json.loads(records[-1]).get("mask_iou_mean") if records else None
    return summary


def run_mask_demo(work="runs/demo_mask", opts=(), refine_opts=(), seed: int = 0, device: str = "cpu",
                  workers: int | None = None, scale: float = 1.0, log=print) -> dict:
    """Run the whole mask demo; ``opts`` override both stages' configs, ``refine_opts`` the refine
    stage's after them. Returns a summary dict (also ``<work>/demo_summary.json``)."""
    from pipeline.ingest import build_dataset
    from pipeline.synthetic import make_dataset
    from track.snapshots import make_trackers
    from track.vos.datasets import load_davis
    from track.vos.experiment import BOX_SUFFIX, evaluate_vos

    work = Path(work)
    base_cfg = load_config(BASE_CFG, opts)
    base_ckpt = work / "base" / f"checkpoint_e{base_cfg.TRAIN.EPOCH}.pth"  # the refine stage starts from it
    refine_cfg = load_config(REFINE_CFG, [*opts, *refine_opts, f"TRAIN.PRETRAINED={base_ckpt}"])
    workers = workers or os.cpu_count() or 1
    prepare_work(work)
    timings = {}

    def size(name):
        videos, frames = SIZES[name]
        return max(2, round(videos * scale)), frames

    t = stage(log, "1/5 synthetic raw datasets with masks (COCO, YouTube-VOS; DAVIS to evaluate)")
    for i, name in enumerate(("YTBVOS", "COCO", "DAVIS")):
        videos, frames = size(name)
        info = make_dataset(name, work / "raw" / name, videos=videos, frames=frames, seed=seed + i,
                            broken=name != "DAVIS")
        log(f"   {name}: {work / 'raw' / name} ({info['seconds']:.1f} s)")
    timings["raw_s"] = time.perf_counter() - t

    t = stage(log, "2/5 crop images and masks into LMDB shards (tools/build_lmdb.py)")
    shards = work / "shards"
    for name in ("YTBVOS", "COCO"):
        report = build_dataset(name, root=work / "raw" / name, out_root=shards, workers=workers, progress=True)
        log(f"   {name}: {report.get('counts', {})}")
    timings["shards_s"] = time.perf_counter() - t

    t = stage(log, f"3/5 base stage: {BASE_CFG.name} on {device} (train/run.py)")
    base_summary = _train(base_cfg, shards, work / "base", device)
    timings["base_s"] = time.perf_counter() - t

    t = stage(log, f"4/5 refine stage: {REFINE_CFG.name} from {base_ckpt.name}")
    refine_summary = _train(refine_cfg, shards, work / "refine", device)
    final = work / "refine" / f"checkpoint_e{refine_cfg.TRAIN.EPOCH}.pth"
    timings["refine_s"] = time.perf_counter() - t

    t = stage(log, f"5/5 evaluate on synthetic DAVIS {SPLIT} (tools/eval_vos.py --box-masks)")
    sequences = load_davis(work / "raw" / "DAVIS", SPLIT)
    trackers = make_trackers(refine_cfg, [final], baselines=("untrained",), device=device, seed=seed)
    trackers = {("trained" if k == final.stem else k): v for k, v in trackers.items()}
    results = work / "eval"
    scores = evaluate_vos(trackers, sequences, work / "raw" / "DAVIS", SPLIT, results, box_masks=True,
                          log=log)["trackers"]
    jf = {"trained": scores["trained"]["overall"]["J&F-Mean"],
          "box": scores["trained" + BOX_SUFFIX]["overall"]["J&F-Mean"],
          "untrained": scores["untrained"]["overall"]["J&F-Mean"]}
    columns = {"trained": results / "trained", "box": results / ("trained" + BOX_SUFFIX),
               "untrained": results / "untrained"}
    overlays = write_overlays(sequences[:3], columns, work / "overlays")
    timings["eval_s"] = time.perf_counter() - t

    beats = all(jf["trained"] > jf[b] for b in BASELINES)
    keys = ("global_step", "pairs_per_s", "data_wait_frac", "skipped_steps", "replaced_crops", "mask_iou_mean")
    summary = {
        "work": str(work), "configs": [str(BASE_CFG), str(REFINE_CFG)], "device": device, "timings_s": timings,
        "base": {k: base_summary.get(k) for k in keys}, "refine": {k: refine_summary.get(k) for k in keys},
        "jf_mean": jf, "figures": {n: s["overall"] for n, s in scores.items()},
        "overlays": [str(p) for p in overlays], "trained_beats_baselines": beats, "eval_dir": str(results),
    }
    write_json(work / "demo_summary.json", summary, indent=2)
    log("\n== summary")
    for name in ("base", "refine"):
        tr = summary[name]
        iou = "-" if tr["mask_iou_mean"] is None else f"{tr['mask_iou_mean']:.2f}"
        log(f"   {name} stage: {tr['global_step']} steps, {tr['pairs_per_s']:.1f} pairs/s, "
            f"data wait {100 * tr['data_wait_frac']:.1f}% of step time, last mask IoU {iou}")
    log("   DAVIS J&F-Mean: " + ", ".join(f"{k} {v:.3f}" for k, v in jf.items()))
    log(f"   mask overlays (ground truth | trained | box | untrained): {work / 'overlays'}")
    log_verdict(log, timings, beats)
    return summary
