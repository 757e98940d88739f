"""Write small synthetic datasets in their official raw layouts (see pipeline/synthetic/).

    python tools/make_synthetic.py --dataset VID --out DIR [--videos N --frames M --seed S --size WxH]
    python tools/make_synthetic.py --dataset all --out DIR      # DIR/<NAME>/ for every dataset
    python tools/make_synthetic.py --eval --out DIR             # held-out OTB-layout sequences
    python tools/make_synthetic.py --shards 100000 --out DIR    # DIR/VID/: built shards, ~33 KB crops (~3.3 GB)
    python tools/make_synthetic.py --shards 10000000 --alias --out DIR   # a 10M-entry index over few values
    python tools/make_synthetic.py --shards 20000 --masks --shard-dataset COCO --out DIR   # crops with masks
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import synthetic  # noqa: E402


def _describe(summary):
    totals = summary['totals']
    unit = 'images' if summary['dataset'] in ('COCO', 'DET') else 'videos'
    line = (f"{summary['dataset']:7s} {summary['root']}: {totals['videos']} {unit}, "
            f"{totals['image_files']} image files")
    if 'annotations' in totals:
        what = 'object masks' if summary['dataset'] in ('YTBVOS', 'DAVIS') else 'boxes'
        line += f", {totals['annotations']} {what} ({totals['valid_annotations']} valid)"
    broken = summary.get('counts')
    if broken:
        line += ', broken: ' + ', '.join(f'{k}={v}' for k, v in broken.items())
    return line + f" [{summary['seconds']:.2f} s]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--dataset', help=f"one of {', '.join(synthetic.DATASETS)} (YOUTUBEBB = YTB) or 'all'")
    what.add_argument('--eval', action='store_true', help='write held-out OTB-layout evaluation sequences')
    what.add_argument('--shards', type=int, metavar='ENTRIES',
                      help='write a built shard folder OUT/<--shard-dataset>/ of ENTRIES realistic crops (~30-35 KB '
                           'JPEG 511 crops, --distinct of them repeated), for read-path and index benchmarks')
    parser.add_argument('--out', required=True, type=Path, help='output root directory')
    parser.add_argument('--videos', type=int, help='videos (images for COCO/DET); default per dataset')
    parser.add_argument('--frames', type=int, help='frames per video; default per dataset')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', help='frame size WxH, e.g. 320x240 (default 320x240; YTB 384x216)')
    parser.add_argument('--no-broken', action='store_true', help='write no deliberate faults')
    parser.add_argument('--force', action='store_true', help='replace earlier synthetic output in --out')
    parser.add_argument('--distinct', type=int, default=256, help='--shards: distinct crop values (default 256)')
    parser.add_argument('--alias', action='store_true',
                        help='--shards: store only the distinct values; index entries point at them (a 10M-entry '
                             'index in seconds; not for --verify)')
    parser.add_argument('--shard-dataset', default='VID', help='--shards: dataset folder name (default VID)')
    parser.add_argument('--masks', action='store_true',
                        help='--shards: every entry also has a mask (~200-400 B PNG of an object-sized blob), as '
                             'COCO and YouTube-VOS folders have; not with --alias')
    args = parser.parse_args(argv)
    if args.shards is not None:
        try:
            out = synthetic.make_shards(args.out, args.shards, dataset=args.shard_dataset, distinct=args.distinct,
                                        alias=args.alias, seed=args.seed, overwrite=args.force, progress=True,
                                        masks=args.masks)
        except (ValueError, FileExistsError) as err:
            parser.error(str(err))
        print(f"SHARDS  {out['folder']}: {out['entries']} entries, {out['bytes'] / 2**30:.2f} GiB of crops"
              f"{' (aliased)' if args.alias else ''}{' with masks' if args.masks else ''} [{out['seconds']:.1f} s]")
        return 0
    try:
        size = synthetic.parse_size(args.size) if args.size else None
        common = dict(videos=args.videos, frames=args.frames, seed=args.seed, size=size,
                      overwrite=args.force, progress=True)
        if args.eval:
            summary = synthetic.make_eval(args.out, **common)
            print(f"EVAL    {summary['root']}: {len(summary['sequences'])} sequences, "
                  f"{summary['totals']['image_files']} images, index SYNTH.json [{summary['seconds']:.2f} s]")
            return 0
        common['broken'] = not args.no_broken
        if args.dataset.lower() == 'all':
            summaries = synthetic.make_all(args.out, **common)
        else:
            summaries = [synthetic.make_dataset(args.dataset, args.out, **common)]
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    for summary in summaries:
        print(_describe(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
