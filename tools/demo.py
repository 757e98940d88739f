"""The README's main command: synthetic raw data → LMDB shards → short CPU training → evaluation.

    python tools/demo.py                      # about 5 minutes on 2 idle CPU cores
    python tools/demo.py --work runs/demo2 --opts TRAIN.EPOCH=2
    python tools/demo.py --work runs/smoke --scale 0.1 --opts TRAIN.EPOCH=2 TRAIN.BATCH_SIZE=4 DATASET.VIDEOS_PER_EPOCH=8
    python tools/demo.py --mask               # SiamMask: base and refine stages, DAVIS J&F (about 5 minutes)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mask", action="store_true",
                   help="the SiamMask demo: masks through shards, base and refine stages, DAVIS J&F against the "
                        "untrained network and box-as-mask (configs/demo_mask_{base,refine}_cpu.yaml)")
    p.add_argument("--work", help="work folder, replaced on every run (default: runs/demo, runs/demo_mask)")
    p.add_argument("--cfg", help="experiment config (default: configs/demo_cpu.yaml; not with --mask)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the synthetic dataset sizes (training videos, evaluation frames)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VAL",
                   help="config overrides (with --mask: of both stages)")
    p.add_argument("--refine-opts", nargs="*", default=[], metavar="KEY=VAL",
                   help="with --mask: overrides of the refine stage only, after --opts")
    args = p.parse_args(argv)
    if args.refine_opts and not args.mask:
        p.error("--refine-opts needs --mask")
    if args.cfg and args.mask:
        p.error("--cfg is not for --mask: its configs are configs/demo_mask_{base,refine}_cpu.yaml (use --opts)")

    from train.config import ConfigError
    from train.demo import run_demo
    from train.demo_mask import run_mask_demo

    try:
        if args.mask:
            summary = run_mask_demo(args.work or "runs/demo_mask", args.opts, args.refine_opts, seed=args.seed,
                                    device=args.device, scale=args.scale)
        else:
            summary = run_demo(args.work or "runs/demo", args.cfg or str(ROOT / "configs" / "demo_cpu.yaml"),
                               args.opts, seed=args.seed, device=args.device, scale=args.scale)
    except (ConfigError, FileExistsError, ValueError) as err:  # bad options, config or work folder: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["trained_beats_baselines"] else 1


if __name__ == "__main__":
    sys.exit(main())
