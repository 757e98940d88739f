"""Benchmark training throughput, MFU, data wait and peak memory for the frozen and unfrozen phases.

    python tools/bench_train.py --cfg configs/siamrpn_r50_l234_dwxcorr_8gpu.yaml --shards cache/ \
        --device cuda --steps 50 [--json out.json] [--profile-dir DIR] [--opts TRAIN.BATCH_SIZE=64]

Each phase runs the real loader feeding the model, then the same number of steps on one batch
held in device memory (the compute ceiling). GPU time from CUDA events; MFU against the card's
own dense peak (train/gpu_peaks.py); data wait on the device timeline on CUDA (train/bench.py).
--max-seconds ends a timed window early (at least one step), so the figures fit a time budget.
One JSON object on stdout (and --json); each phase's figures also go to stderr as soon as they
are complete (a line "bench_train phase NAME {json}"); --profile-dir also writes a
torch.profiler summary of 5 steps per phase.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.fileio import atomic_write  # noqa: E402
from train.bench import bench_training  # noqa: E402
from train.config import ConfigError, load_config  # noqa: E402
from train.distributed import parse_device, shutdown_distributed  # noqa: E402
from train.preflight import PreflightError  # noqa: E402


def _report_phase(name: str, entry: dict) -> None:
    print(f"bench_train phase {name} {json.dumps(entry)}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    p.add_argument("--shards", default="cache/")
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=30, help="timed steps per phase and source")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="end a timed window after this many seconds (at least one step)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--profile-dir", default=None, help="write profile_{frozen,unfrozen}.txt (torch.profiler)")
    p.add_argument("--profile-steps", type=int, default=5, help="steps in each profile (default 5)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VAL")
    args = p.parse_args(argv)
    try:
        parse_device(args.device)
        cfg = load_config(args.cfg, args.opts)
        result = bench_training(cfg, args.shards, args.device, args.steps, args.warmup, args.profile_dir,
                                args.profile_steps, max_seconds=args.max_seconds, on_phase=_report_phase)
    except (ConfigError, PreflightError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    result["cfg"] = args.cfg
    result["opts"] = args.opts
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        atomic_write(args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
