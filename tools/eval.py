"""One-pass evaluation of snapshots (and baselines) on OTB / GOT-10k / LaSOT layout sequences.

Examples:
  python tools/eval.py --cfg configs/demo_cpu.yaml --snapshot runs/demo/checkpoint_e5.pth \\
      --dataset data/synthetic_eval --format otb --baselines static untrained --plot
  python tools/eval.py --cfg configs/demo_cpu.yaml --checkpoints runs/demo/ --dataset data/eval
Writes <out>/results/<tracker>/..., <out>/report.txt, <out>/report.json (and PNG plots).
Sequences run through the batched engine (track/engine.py); --sequential runs them one at a
time, frame by frame, as PySOT does (same boxes up to float rounding).
"""
import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.eval_setup import eval_setup  # noqa: E402
from track.engine import EngineOptions  # noqa: E402
from track.datasets import FORMATS  # noqa: E402
from track.metrics import ABSENT_POLICIES, DEFAULT_ABSENT  # noqa: E402
from track.ope import evaluate  # noqa: E402
from track.snapshots import BASELINES, make_trackers  # noqa: E402


def add_tracker_options(p, checkpoints_help: str, baselines: bool = True) -> None:
    """The options `eval_setup` reads (shared with tools/eval_vot.py and tools/tune.py), and
    --baselines (not for tuning)."""
    p.add_argument('--cfg', help='model/tracker config YAML (default: the config saved in the first '
                   'snapshot, if it is one of our training checkpoints)')
    p.add_argument('--opts', nargs='*', default=[], help='config overrides KEY=VALUE')
    p.add_argument('--snapshot', action='append', default=[], help='checkpoint file; repeat for several')
    p.add_argument('--checkpoints', help=checkpoints_help)
    if baselines:
        p.add_argument('--baselines', nargs='*', default=[], choices=BASELINES,
                       help='static: never moves its first box; untrained: the network at random init')
    p.add_argument('--device', default=None, help='cpu | cuda (default: cuda if cfg.CUDA and available)')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave default)')


def add_engine_options(p, batch_help: str = 'sequences') -> None:
    """The batched engine's options (`engine_options`), shared by every tool that tracks."""
    p.add_argument('--batch-size', type=int, default=0,
                   help=f'{batch_help} per network forward and stream (default: 8 on CPU, 64 on CUDA)')
    p.add_argument('--streams', type=int, default=0,
                   help='CPU only: sub-batches run concurrently, torch threads split between them (default 2)')


def add_run_options(p, sequential: bool = True, batch_help: str = 'sequences') -> None:
    """How sequences are run and shown (shared with tools/eval_vot.py and tools/tune.py): the
    engine's options, --sequential where the tool can also run PySOT's way, --quiet."""
    add_engine_options(p, batch_help)
    if sequential:
        p.add_argument('--sequential', action='store_true',
                       help='one sequence at a time, frame by frame (PySOT\'s way) instead of the batched engine')
    p.add_argument('--quiet', action='store_true', help='no progress bars')


def engine_options(args) -> EngineOptions | None:
    """The engine options `add_run_options`' options give (None: --sequential)."""
    if getattr(args, 'sequential', False):
        return None
    return EngineOptions(batch_size=args.batch_size, streams=args.streams)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tracker_options(p, 'run folder: evaluate every checkpoint_e*.pth, report the best')
    p.add_argument('--dataset', required=True, help='root folder of the sequences')
    p.add_argument('--format', default='otb', choices=FORMATS)
    p.add_argument('--index', help='PySOT-toolkit index JSON (e.g. OTB100.json; a path or a file name in '
                   '--dataset) giving sequences, frames and boxes; image paths relative to --dataset. '
                   'Default for otb: the single such *.json in --dataset, if any')
    p.add_argument('--out', default='results/eval', help='output folder')
    p.add_argument('--plot', action='store_true', help='write success/precision PNGs')
    p.add_argument('--absent', default=None, choices=ABSENT_POLICIES,
                   help='frames without a visible target (LaSOT occlusion/out-of-view, GOT-10k cover 0): '
                        'miss = scored as misses, kept in the denominator (the official LaSOT toolkit); '
                        'exclude = left out (the GOT-10k rule). Default: '
                        + ', '.join(f'{k} {v}' for k, v in DEFAULT_ABSENT.items()))
    add_run_options(p)
    return p.parse_args(argv)


def trackers_to_evaluate(args, nothing: str) -> dict:
    """{name: tracker} for what `add_tracker_options`' options name (`train.eval_setup`: the
    snapshots, the config, the device); exits with the message ``nothing`` when they name none."""
    if not args.snapshot and not args.checkpoints and not args.baselines:
        sys.exit(nothing)
    setup = eval_setup(args.cfg, args.opts, args.snapshot, args.checkpoints, args.device, args.threads)
    return make_trackers(setup.cfg, setup.snapshots, args.baselines, setup.device)


def run(args):
    trackers = trackers_to_evaluate(args, 'nothing to evaluate: give --snapshot, --checkpoints or --baselines')
    evaluate(trackers, args.dataset, args.format, args.out, plot=args.plot, absent=args.absent,
             progress=not args.quiet, index=args.index, engine=engine_options(args))


def run_stoppable(run, args, reuse: str) -> None:
    """``run(args)`` with bad input as one line (exit 1) and Ctrl-C / SIGTERM as one line saying
    what a rerun of the same command reuses (``reuse``), exit 130 / 143."""
    stopped_by = []

    def stop(signum, frame):
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        run(args)
    except KeyboardInterrupt:
        signum = stopped_by[0] if stopped_by else signal.SIGINT
        print(f'interrupted by {signal.Signals(signum).name}: {reuse}', file=sys.stderr)
        sys.exit(128 + signum)
    except (OSError, ValueError) as err:  # bad input (ConfigError is a ValueError): a message, no traceback
        sys.exit(f'error: {err}')
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    args = parse_args(argv)
    run_stoppable(run, args, f'the sequences finished so far are in {Path(args.out) / "results"}; the same command '
                             f'tracks only the others (unless the trackers changed)')


if __name__ == '__main__':
    main()
