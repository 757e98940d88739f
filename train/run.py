"""Train a Siamese tracker from LMDB shards (PySOT's recipe).

    python train/run.py --shards cache/                      # SiamRPN++ R50, on CUDA if present
    torchrun --nproc_per_node=8 train/run.py --shards cache/ --out runs/r50
    python train/run.py --shards cache/ --out runs/r50 --resume       # continue the newest checkpoint
    python train/run.py --cfg configs/siamrpn_alex_dwxcorr_16gpu.yaml --shards cache/ --device cuda:1
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from train.checkpoint import CheckpointError  # noqa: E402
from train.config import ConfigError, load_config  # noqa: E402
from train.distributed import parse_device, shutdown_distributed  # noqa: E402
from train.preflight import PreflightError  # noqa: E402
from train.stop import StopSignals  # noqa: E402

DEFAULT_CFG = REPO / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"  # PySOT's SiamRPN++ training recipe


def _device_arg(text: str) -> str:
    try:
        parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(DEFAULT_CFG),
                   help="experiment YAML, PySOT schema (default: the SiamRPN++ R50 recipe, "
                        "configs/siamrpn_r50_l234_dwxcorr_8gpu.yaml)")
    p.add_argument("--shards", default="cache/", help="root folder of the LMDB shards (default: cache/)")
    p.add_argument("--out", default=None, help="run folder for checkpoints and logs (default: runs/<cfg name>)")
    p.add_argument("--device", type=_device_arg, default=None,
                   help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N for a single process "
                        "(default: cuda if available, else cpu)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from the newest checkpoint in OUT that loads, or from the given checkpoint")
    resume.add_argument("--overwrite", action="store_true",
                        help="start afresh in an OUT that holds an earlier run, deleting its checkpoints and logs")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs and metrics.jsonl still written)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VAL", help="config overrides, e.g. TRAIN.EPOCH=2")
    return p.parse_args(argv)


def default_device() -> str:
    """--device when none is given: CUDA if torch sees a GPU (under torchrun: cuda:LOCAL_RANK)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> int:
    args = parse_args(argv)
    with StopSignals() as signals:  # SIGTERM / Ctrl-C: a checkpoint after the step in flight, then 143 / 130
        return _train(args, signals)


def _train(args, signals) -> int:
    from pipeline.prepare import UnusableCropsError
    from train.trainer import RunStopped, Trainer, TrainingInterrupted

    device = args.device or default_device()
    out = Path(args.out) if args.out else Path("runs") / Path(args.cfg).stem
    try:
        cfg = load_config(args.cfg, args.opts)
        trainer = Trainer(cfg, shards=args.shards, out_dir=out, device=device, resume=args.resume,
                          show_progress=not args.no_progress, overwrite=args.overwrite, stop_signals=signals)
    except (ConfigError, PreflightError, CheckpointError, ValueError) as err:  # bad input: message, no traceback
        print(f"error: {err}", file=sys.stderr)
        shutdown_distributed()
        return 2
    if trainer.finished:  # --resume of a run that is done: say so, leave its files as they are
        if trainer.ctx.is_main:
            print(trainer.finished_message())
        trainer.close()
        shutdown_distributed()
        return 0
    try:
        summary = trainer.fit()
    except TrainingInterrupted as err:  # already logged in one line (checkpoint, resume command)
        return err.exit_status
    except RunStopped:  # already logged (stderr and train.log) in one line
        return 1
    except UnusableCropsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on {err.filename or out}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if trainer.ctx.is_main:
        print(f"done: {summary['global_step']} steps, {summary['pairs_per_s']:.1f} pairs/s, "
              f"data wait {100 * summary['data_wait_frac']:.1f}%, {summary['skipped_steps']} skipped steps, "
              f"{summary['replaced_crops']} replaced crops; run folder {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
