"""Search tracker hyper-parameters (any numeric TRACK key) for one or many checkpoints on a
tuning set, the settings batched through the network together with the sequences; resumable.

Examples:
  python tools/tune.py --cfg configs/demo_cpu.yaml --checkpoints runs/demo/train \\
      --dataset data/tune_seqs --report-set data/test_seqs \\
      --param PENALTY_K=0.04,0.1,0.16 --param WINDOW_INFLUENCE=0.3,0.4,0.5 --param LR=0.3,0.4
  python tools/tune.py ... --param PENALTY_K=0.01:0.3 --param LR=0.2:0.6 --samples 40 --seed 1
Writes <out>/report.json, report.txt (ranked), heatmap.png and winner.yaml (use it as
tools/eval.py --cfg winner.yaml on the report set).  Every (checkpoint, setting, sequence) is
stored as it finishes under <out>/runs/: run the same command again to resume.  Tuning on the
set you report on inflates the figures: the tool refuses when --dataset and --report-set are
the same folder (or one holds the other) unless --allow-test-tuning, and the report says so.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.eval import add_run_options, add_tracker_options, engine_options  # noqa: E402
from train.eval_setup import eval_setup  # noqa: E402
from track.datasets import FORMATS, load_sequences  # noqa: E402
from track.snapshots import load_snapshot  # noqa: E402
from track.tracker import build_tracker  # noqa: E402
from track.tune import (METRICS, Search, checkpoint_key, overlapping_folders, parse_space,  # noqa: E402
                        sample_settings, scored_sequences, setting_config, track_settings, write_report)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tracker_options(p, 'run folder: every checkpoint_e*.pth in it', baselines=False)
    p.add_argument('--dataset', required=True, help='the tuning set (root folder of its sequences)')
    p.add_argument('--format', default='otb', choices=FORMATS)
    p.add_argument('--index', help='PySOT-toolkit index JSON for the tuning set (see tools/eval.py)')
    p.add_argument('--report-set', required=True,
                   help='the folder you will report results on; it must not be the tuning set')
    p.add_argument('--allow-test-tuning', action='store_true',
                   help='tune even though --dataset and --report-set overlap (the report says so)')
    p.add_argument('--param', action='append', default=[], metavar='KEY=v1,v2|KEY=low:high',
                   help='a TRACK key and its values (a grid) or range (random sampling); repeat')
    p.add_argument('--samples', type=int, default=0, help='random settings to draw (0: the full grid)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random sample')
    p.add_argument('--metric', choices=METRICS, help='ranking figure (default: auc; ao for got10k)')
    p.add_argument('--heatmap', nargs=2, metavar=('X', 'Y'), help='two parameters for heatmap.png '
                   '(default: the first two --param keys)')
    p.add_argument('--out', default='results/tune', help='search folder (results, report, winner.yaml)')
    p.add_argument('--top', type=int, default=20, help='rows of the text table (0: all)')
    add_run_options(p, sequential=False, batch_help='(setting, sequence) pairs')
    return p.parse_args(argv)


def run(args) -> dict:
    if not args.snapshot and not args.checkpoints:
        raise ValueError('nothing to tune: give --snapshot or --checkpoints')
    tuned_on_report_set = overlapping_folders(args.dataset, args.report_set)
    if tuned_on_report_set and not args.allow_test_tuning:
        raise ValueError(f'the tuning set {args.dataset} and the report set {args.report_set} are the same folder '
                         '(or one holds the other): tuning on the set you report on inflates its figures; '
                         'tune on another set, or give --allow-test-tuning (the report will say so)')
    setup = eval_setup(args.cfg, args.opts, args.snapshot, args.checkpoints, args.device, args.threads)
    cfg, device = setup.cfg, setup.device
    space = parse_space(args.param, cfg.TRACK)
    settings = sample_settings(space, args.samples, args.seed)
    variants = [setting_config(cfg, s).TRACK for s in settings]
    heatmap = tuple(args.heatmap or (list(space) * 2)[:2])
    unknown = [k for k in heatmap if k not in space]
    if unknown:
        raise ValueError(f'--heatmap {unknown}: not among the searched parameters {list(space)}')
    metric = args.metric or ('ao' if args.format == 'got10k' else 'auc')
    sequences = scored_sequences(load_sequences(args.dataset, args.format, index=args.index), args.dataset)
    if tuned_on_report_set:
        print(f'WARNING: tuning on the report set {args.report_set} (--allow-test-tuning)')
    search = Search(args.out, args.dataset, args.format, cfg.TRACK)
    engine = engine_options(args)
    checkpoints, counts = {}, {'computed': 0, 'reused': 0}
    for path in setup.snapshots:
        key = checkpoint_key(path)
        checkpoints[key] = path
        tracker = build_tracker(cfg, load_snapshot(cfg, path, device), device)
        done = track_settings(search, tracker, key, settings, variants, sequences, engine, not args.quiet)
        counts = {k: counts[k] + done[k] for k in counts}
    sets = {'tuning_set': str(args.dataset), 'report_set': str(args.report_set),
            'tuned_on_report_set': tuned_on_report_set}
    report = write_report(search, cfg, checkpoints, settings, sequences, args.format, metric, heatmap,
                          sets, counts, args.top)
    print(report['text'], end='')
    print(f'({counts["computed"]} (checkpoint, setting, sequence) runs tracked now, {counts["reused"]} resumed '
          f'from {Path(args.out) / "runs"})')
    return report


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as err:  # bad input (ConfigError is a ValueError): a message, no traceback
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
