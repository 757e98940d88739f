"""VOT short-term (reset-based) evaluation: EAO, accuracy and robustness as vot-toolkit computes them.

Examples:
  python tools/eval_vot.py --cfg configs/siamrpn_r50_l234_dwxcorr.yaml --snapshot model.pth --dataset /data/VOT2018
  python tools/eval_vot.py --checkpoints runs/r50 --dataset /data/VOT2018 --eao pysot      # every epoch
  python tools/eval_vot.py --dataset ws/sequences --results ws/results --trackers siamrpn  # score stored runs
Runs the supervised experiment (failure at overlap 0, re-initialisation 5 frames later) once per
tracker and sequence, writes <out>/results/<tracker>/baseline/<seq>/<seq>_001.txt (vot-toolkit's
layout; stored runs are reused unless --restart), <out>/report.txt and <out>/report.json.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.eval import add_run_options, add_tracker_options, engine_options, run_stoppable, trackers_to_evaluate  # noqa: E402
from track.vot.analysis import DEFAULT_EAO_CHALLENGE, DEFAULT_EAO_INTERVAL, EAO_INTERVALS, EAO_VARIANTS  # noqa: E402
from track.vot.evaluate import batched_driver, drive_sequential, evaluate_vot, score_stored  # noqa: E402


def parse_interval(text: str) -> tuple:
    """'vot2018' (a named challenge) or 'LOW,HIGH'."""
    if text in EAO_INTERVALS:
        return EAO_INTERVALS[text]
    try:
        low, high = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected one of {sorted(EAO_INTERVALS)} or LOW,HIGH') from None
    return low, high


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, help='VOT sequences folder (list.txt + <seq>/...)')
    add_tracker_options(p, 'run folder: evaluate every checkpoint_e*.pth')
    p.add_argument('--results', help='score the runs stored here (vot-toolkit layout, e.g. a workspace\'s '
                   'results/) for --trackers instead of running trackers')
    p.add_argument('--trackers', nargs='*', default=[], help='tracker names under --results')
    p.add_argument('--out', default='results/vot', help='output folder')
    p.add_argument('--eao', default='vot', choices=EAO_VARIANTS,
                   help="vot: vot-toolkit's EAO (default); pysot: PySOT toolkit's variant")
    p.add_argument('--interval', type=parse_interval, default=DEFAULT_EAO_INTERVAL,
                   help=f'EAO interval: {", ".join(sorted(EAO_INTERVALS))} or LOW,HIGH (default '
                   f'{DEFAULT_EAO_CHALLENGE}: {",".join(map(str, DEFAULT_EAO_INTERVAL))})')
    p.add_argument('--restart', action='store_true', help='rerun sequences whose runs are stored')
    add_run_options(p)
    return p.parse_args(argv)


def run(args):
    low, high = args.interval
    if args.results:
        if not args.trackers:
            sys.exit('--results needs --trackers (names of folders under it)')
        score_stored(args.results, args.trackers, args.dataset, args.out, low, high, args.eao)
        return
    trackers = trackers_to_evaluate(args, 'nothing to evaluate: give --snapshot, --checkpoints, --baselines '
                                          'or --results')
    drive = drive_sequential if args.sequential else batched_driver(engine_options(args))
    evaluate_vot(trackers, args.dataset, args.out, low, high, args.eao, restart=args.restart,
                 progress=not args.quiet, drive=drive)


def main(argv=None):
    args = parse_args(argv)
    run_stoppable(run, args, f'the runs finished so far are stored in {Path(args.out) / "results"} and the same '
                             f'command reuses them (--restart runs them again)')


if __name__ == '__main__':
    main()
