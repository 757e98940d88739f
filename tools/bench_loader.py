"""Benchmark the DALI pair loader against the PySOT-style reference, in the same run.

    python tools/bench_loader.py --shards cache/ --device cpu|cuda --batch-size B --batches N
                                 [--cfg CFG] [--opts KEY=VAL ...] [--rounds R] [--json out.json]

DALI: `pipeline.loader.build_loader` on --device.  Reference: `pipeline.reference.
ReferenceDataset` in a torch DataLoader with one worker per core (PySOT style; pinned memory
and a host->device copy on cuda).  Both run the same config (default: PySOT's 8-GPU recipe,
search blur 0.2) on the same shards.  Reports pairs/s, CPU cores busy (process + worker CPU
time / wall time) and the GPU name; prints and writes JSON with the speed ratio.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from pipeline.fileio import atomic_write  # noqa: E402
from pipeline.loader import build_loader  # noqa: E402
from pipeline.reference import ReferenceDataset  # noqa: E402
from pipeline.shards import open_shard_readers  # noqa: E402
from train.config import load_config  # noqa: E402

DEFAULT_CFG = Path(__file__).resolve().parents[1] / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _touch(batch: dict, device: torch.device) -> None:
    """Make sure the batch really exists on the device (wait for async copies)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_dali(cfg, shards, device, batch_size, batches, warmup, num_threads, epoch=0,
               roi_decode=None, crop_kernel=None):
    loader = build_loader(cfg, shards=shards, batch_size=batch_size, device=str(device),
                          num_threads=num_threads, roi_decode=roi_decode, crop_kernel=crop_kernel)
    loader.set_epoch(epoch)
    if len(loader) < batches + warmup:
        raise SystemExit(f"epoch has only {len(loader)} batches of {batch_size}; lower --batches")
    if batches < 4 * loader.run_batches:
        # up to IN_FLIGHT runs are rendered ahead of the window and behind it
        print(f"warning: {batches} batches span fewer than 4 DALI runs of {loader.run_batches} "
              f"batches: the DALI figures are unreliable", file=sys.stderr)
    it = iter(loader)
    for _ in range(warmup):
        _touch(next(it), device)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        _touch(next(it), device)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    it.close()
    return {"pairs_per_s": batches * batch_size / wall, "cpu_cores_busy": cpu / wall,
            "cpu_ms_per_pair": 1e3 * cpu / (batches * batch_size), "wall_s": wall,
            "num_threads": loader.num_threads, "roi_decode": loader.roi_decode,
            "crop_kernel": getattr(loader.graph, "kernel", None),
            "batches_per_dali_run": loader.run_batches, "skipped": loader.skipped}


def bench_reference(cfg, shards, device, batch_size, batches, warmup, workers, epoch=0):
    readers = open_shard_readers(cfg, shards)
    dataset = ReferenceDataset(cfg, shards, seed=0, epoch=epoch, readers=readers)
    total = (batches + warmup) * batch_size
    if len(dataset) < total:
        raise SystemExit(f"epoch has only {len(dataset)} pairs; lower --batches")
    loader = DataLoader(Subset(dataset, range(total)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True)
    c_start, t_start = _cpu_seconds(), time.perf_counter()
    t0 = None
    for i, batch in enumerate(loader):  # iterate to the end so the workers exit and are counted
        if device.type == "cuda":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        _touch(batch, device)
        if i == warmup - 1:
            t0 = time.perf_counter()
    end = time.perf_counter()
    if t0 is None:
        t0 = t_start
    cpu = _cpu_seconds() - c_start  # includes worker start-up and the warm-up batches
    return {"pairs_per_s": batches * batch_size / (end - t0), "cpu_cores_busy": cpu / (end - t_start),
            "cpu_ms_per_pair": 1e3 * cpu / ((batches + warmup) * batch_size), "wall_s": end - t0,
            "workers": workers}


def _median_run(runs: list) -> dict:
    """The run with the median pairs/s, plus every round's pairs/s."""
    ranked = sorted(runs, key=lambda r: r["pairs_per_s"])
    best = dict(ranked[len(ranked) // 2])
    best["rounds_pairs_per_s"] = [round(r["pairs_per_s"], 1) for r in runs]
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="cache/")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating DALI/reference rounds; medians are reported (robust "
                             "to other load on the machine)")
    parser.add_argument("--cfg", default=str(DEFAULT_CFG))
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--num-threads", type=int, default=None, help="DALI threads (default: auto)")
    parser.add_argument("--roi-decode", choices=["auto", "on", "off"], default="auto",
                        help="decode only the region a crop touches (auto: on for cpu)")
    parser.add_argument("--native-ops", action="store_true",
                        help="CPU: DALI's native operators instead of the fused crop kernel "
                             "(the GPU graph's operators; an ablation)")
    parser.add_argument("--workers", type=int, default=None, help="reference workers (default: cores)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--json", default="runs/bench_loader.json")
    args = parser.parse_args(argv)

    cfg = load_config(args.cfg, overrides=args.opts)
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0))
    result = {
        "config": args.cfg, "overrides": args.opts, "datasets": list(cfg.DATASET.NAMES),
        "search_blur": cfg.DATASET.SEARCH.BLUR, "batch_size": args.batch_size,
        "batches": args.batches, "device": args.device, "cpu_cores": cores,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    dali_runs, ref_runs = [], []
    for r in range(args.rounds):
        dali_runs.append(bench_dali(cfg, args.shards, device, args.batch_size, args.batches,
                                    args.warmup, args.num_threads, epoch=r,
                                    roi_decode={"auto": None, "on": True, "off": False}[args.roi_decode],
                                    crop_kernel=False if args.native_ops else None))
        line = (f"round {r}: DALI {dali_runs[-1]['pairs_per_s']:7.1f} pairs/s "
                f"({dali_runs[-1]['cpu_cores_busy']:.2f} cores)")
        if not args.skip_reference:
            ref_runs.append(bench_reference(cfg, args.shards, device, args.batch_size,
                                            args.batches, args.warmup, args.workers or cores,
                                            epoch=r))
            line += (f", reference {ref_runs[-1]['pairs_per_s']:7.1f} pairs/s "
                     f"({ref_runs[-1]['cpu_cores_busy']:.2f} cores)")
        print(line, flush=True)
    result["dali"] = _median_run(dali_runs)
    print(f"DALI loader:      {result['dali']['pairs_per_s']:8.1f} pairs/s, "
          f"{result['dali']['cpu_cores_busy']:.2f} CPU cores busy, "
          f"{result['dali']['cpu_ms_per_pair']:.2f} CPU ms/pair")
    if ref_runs:
        result["reference"] = _median_run(ref_runs)
        result["speedup"] = result["dali"]["pairs_per_s"] / result["reference"]["pairs_per_s"]
        dali_ms = result["dali"]["cpu_ms_per_pair"]  # 0 if the window was all rendered ahead
        result["cpu_efficiency_ratio"] = (result["reference"]["cpu_ms_per_pair"] / dali_ms
                                          if dali_ms > 0 else float("nan"))
        print(f"reference loader: {result['reference']['pairs_per_s']:8.1f} pairs/s, "
              f"{result['reference']['cpu_cores_busy']:.2f} CPU cores busy, "
              f"{result['reference']['cpu_ms_per_pair']:.2f} CPU ms/pair "
              f"({result['reference']['workers']} workers)")
        print(f"speedup (median pairs/s): {result['speedup']:.2f}x; "
              f"CPU time per pair: {result['cpu_efficiency_ratio']:.2f}x less")
    if result["gpu"]:
        print(f"GPU: {result['gpu']}")
    atomic_write(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
