"""DAVIS semi-supervised video object segmentation: J&F as the official DAVIS evaluation computes it.

Examples:
  python tools/eval_vos.py --cfg configs/siammask_r50_l3.yaml --snapshot siammask_r50_l3.pth \\
      --dataset /data/DAVIS --split 2017/val
  python tools/eval_vos.py --checkpoints runs/siammask_refine --dataset /data/DAVIS --split 2016/val --box-masks
  python tools/eval_vos.py --dataset /data/DAVIS --results results/vos --trackers osvos  # score stored masks
Each object starts from its first-frame mask's box and is tracked on its own (all objects of all
sequences through the batched engine; --sequential: one at a time); the objects' masks are
merged by score into <out>/<tracker>/<sequence>/<frame>.png (palette PNGs, DAVIS's layout).
Prints J&F-Mean, J-Mean/Recall/Decay and F-Mean/Recall/Decay overall and per sequence; writes
<out>/report.txt, <out>/report.json and, per tracker, the official tool's
global_results-<subset>.csv and per-sequence_results-<subset>.csv.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.eval import (add_run_options, add_tracker_options, engine_options, run_stoppable,  # noqa: E402
                        trackers_to_evaluate)
from track.vos.datasets import load_davis  # noqa: E402
from track.vos.experiment import evaluate_vos, score_stored  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, help='DAVIS root (JPEGImages/, Annotations/, ImageSets/)')
    p.add_argument('--split', default='2017/val',
                   help='YEAR/SUBSET: 2017/val (default), 2016/val (one object: every labelled pixel), '
                        '2017/train, 2017/test-dev (tracked, not scored: no masks after the first frame)')
    p.add_argument('--resolution', default='480p', help='480p (default) or Full-Resolution')
    p.add_argument('--sequences', nargs='*', default=None, help='only these sequences of the split')
    add_tracker_options(p, 'run folder: evaluate every checkpoint_e*.pth')
    p.add_argument('--results', help='score the masks stored as RESULTS/<tracker>/<sequence>/<frame>.png for '
                   '--trackers instead of running trackers')
    p.add_argument('--trackers', nargs='*', default=[], help='tracker folders under --results')
    p.add_argument('--box-masks', action='store_true',
                   help='also score each tracker\'s boxes filled as masks (<tracker>-box), from the same run')
    p.add_argument('--out', default='results/vos', help='output folder')
    p.add_argument('--restart', action='store_true', help='rerun sequences whose results are stored')
    add_run_options(p, batch_help='objects')
    return p.parse_args(argv)


def run(args):
    sequences = load_davis(args.dataset, args.split, args.resolution, args.sequences)
    if args.results:
        if not args.trackers:
            sys.exit('--results needs --trackers (names of folders under it)')
        return score_stored(args.results, args.trackers, sequences, args.dataset, args.split, args.out,
                            progress=not args.quiet)
    trackers = trackers_to_evaluate(args, 'nothing to evaluate: give --snapshot, --checkpoints, --baselines '
                                          'or --results')
    return evaluate_vos(trackers, sequences, args.dataset, args.split, args.out, box_masks=args.box_masks,
                        engine=engine_options(args), restart=args.restart, progress=not args.quiet)


def main(argv=None):
    args = parse_args(argv)
    run_stoppable(run, args, f'the sequences finished so far are stored in {args.out}; the same command tracks '
                             f'only the others (--restart: all)')


if __name__ == '__main__':
    main()
