"""The README's main command: synthetic raw data → LMDB shards → short CPU training → evaluation.

    python tools/demo.py                      # about 5 minutes on 2 idle CPU cores
    python tools/demo.py --work runs/demo2 --opts TRAIN.EPOCH=2
    python tools/demo.py --work runs/smoke --scale 0.1 --opts TRAIN.EPOCH=2 TRAIN.BATCH_SIZE=4 DATASET.VIDEOS_PER_EPOCH=8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/demo", help="work folder, replaced on every run (default: runs/demo)")
    p.add_argument("--cfg", default=str(ROOT / "configs" / "demo_cpu.yaml"),
                   help="experiment config (default: configs/demo_cpu.yaml)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the synthetic dataset sizes (training videos, evaluation frames)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VAL", help="config overrides")
    args = p.parse_args(argv)

    from train.config import ConfigError
    from train.demo import run_demo

    try:
        summary = run_demo(args.work, args.cfg, args.opts, seed=args.seed, device=args.device, scale=args.scale)
    except (ConfigError, FileExistsError, ValueError) as err:  # bad options, config or work folder: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["trained_beats_baselines"] else 1


if __name__ == "__main__":
    sys.exit(main())
