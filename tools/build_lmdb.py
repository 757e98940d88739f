"""Crop a raw tracking dataset (official layout) into LMDB shards of 511x511 SiamFC crops.

    python tools/build_lmdb.py --dataset VID        # raw data in data/VID/, shards into cache/VID/
    python tools/build_lmdb.py --dataset COCO       # COCO and YTBVOS (YouTube-VOS) crops carry their masks
    python tools/build_lmdb.py --dataset YTBVOS --root /data/youtube-vos
    python tools/build_lmdb.py --dataset VID --root /data/ILSVRC2015 [--out cache/] [--workers N] [--verify]
    python tools/build_lmdb.py --dataset LASOT --root /data/LaSOT --exclude /data/LaSOT/testing_set.txt
    python tools/build_lmdb.py --dataset VID --from-crop511 crop511/ --anno train.json
    python tools/build_lmdb.py --dataset COCO --from-crop511 crop511/ --anno train2017.json   # + the .m.png masks
    python tools/build_lmdb.py --dataset VID --verify-only [--out cache/]
"""
import argparse
import os
import re
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ingest import (DATASETS, LAYOUTS, BuildError, BuildInterrupted, FolderLock, LayoutError,  # noqa: E402
                            build_dataset, exclude_warning, format_summary, verify_shards)


def parse_size(text: str) -> int:
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*', text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f'bad size {text!r}; use e.g. 4G, 512M, 1000000')
    return int(float(m.group(1)) * 1024 ** ' KMGT'.index(m.group(2).upper() or ' '))


def default_root(dataset: str) -> Path:
    """Where the raw dataset is looked for without --root: data/<DATASET>, relative to the working directory."""
    return Path('data') / dataset


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def verify(out_dir: Path, progress: bool) -> int:
    """--verify / --verify-only: 0 if OK, 1 if damaged, 2 if the folder is being built."""
    try:
        with FolderLock(out_dir, exclusive=False):
            problems = verify_shards(out_dir, progress=progress)
    except BuildError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if problems:
        print(f'verify {out_dir}: FAILED', file=sys.stderr)
        for line in problems:
            print(f'  {line}', file=sys.stderr)
        return 1
    print(f'verify {out_dir}: OK')
    return 0


def main(argv=None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a clean stop, resumable, as Ctrl-C
    try:
        return _main(argv)
    except BuildInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print('interrupted; rerun the same command to resume', file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv=None) -> int:
    layouts = '\n\n'.join(f'  {LAYOUTS[d]}' for d in DATASETS)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f'Expected raw layouts (ROOT = --root, default data/<DATASET>):\n\n{layouts}\n\n'
               'Output: OUT/<DATASET>/shard-NNNNN/ (LMDB) + index.arrays + index.msgpack + build_report.json. '
               'One build per folder at a time (build.lock). Rerunning the same command after an interruption '
               'resumes; see docs/datasets.md.')
    p.add_argument('--dataset', required=True, type=str.upper, help=f'one of {", ".join(DATASETS)}')
    p.add_argument('--root', help='raw dataset root in its official layout (see below); default: data/<DATASET> '
                                  'in the working directory (YTB for YouTube-BB)')
    p.add_argument('--out', default='cache', help='output root; shards go to OUT/<DATASET>/ (default: cache)')
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='crop processes (default: all cores)')
    p.add_argument('--shard-size', type=parse_size, default='4G', help='payload bytes per shard (default 4G)')
    p.add_argument('--jpeg-quality', type=int, default=95, help='JPEG quality of the crops (default 95 = cv2.imwrite)')
    p.add_argument('--from-crop511', metavar='DIR',
                   help='import a PySOT crop511 folder instead of cropping raw data (COCO, YTBVOS: with the '
                        "SiamMask authors' <frame>.<track>.m.png masks where present)")
    p.add_argument('--anno', help='PySOT train.json for --from-crop511')
    p.add_argument('--exclude', metavar='FILE',
                   help='text file of video names, one a line, to leave out (matched against the video key and '
                        'its last component), e.g. LaSOT\'s testing_set.txt; part of the build parameters')
    p.add_argument('--overwrite', action='store_true', help='delete OUT/<DATASET> and rebuild from scratch')
    p.add_argument('--verify', action='store_true',
                   help='after building, re-read every crop and compare with the checksums recorded at build '
                        '(exit 1 if anything differs)')
    p.add_argument('--verify-only', action='store_true', help='only verify an existing OUT/<DATASET> (exit 1 if damaged)')
    p.add_argument('--verbose', action='store_true', help='log every committed video')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    a = p.parse_args(argv)
    if a.dataset not in DATASETS:
        p.error(f'unknown dataset {a.dataset!r}; expected one of {", ".join(DATASETS)}')
    if a.workers < 1:
        p.error(f'--workers must be >= 1, got {a.workers}')
    out_dir = Path(a.out) / a.dataset
    if not a.verify_only:
        if a.from_crop511 is None and a.root is None:
            a.root = default_root(a.dataset)
            if not a.root.is_dir():
                print(f'error: no raw {a.dataset} dataset at {a.root} (the default --root); pass --root DIR '
                      f'(layouts: --help)', file=sys.stderr)
                return 2
        if a.from_crop511 is not None and a.anno is None:
            p.error('--from-crop511 needs --anno <train.json>')
        try:
            report = build_dataset(a.dataset, a.root, a.out, workers=a.workers, shard_size=a.shard_size,
                                   jpeg_quality=a.jpeg_quality, overwrite=a.overwrite,
                                   from_crop511=a.from_crop511, anno=a.anno, verbose=a.verbose,
                                   progress=not a.no_progress, exclude=a.exclude)
        except BuildInterrupted:
            raise
        except (LayoutError, BuildError) as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        print(format_summary(report))
        if report['exclude_unmatched']:
            print(exclude_warning(report), file=sys.stderr)
        if report['counts']['entries'] == 0:
            print(f'error: nothing usable was produced for {a.dataset}', file=sys.stderr)
            return 1
    if a.verify or a.verify_only:
        if a.verify_only and not out_dir.is_dir():
            print(f'error: {out_dir} does not exist; nothing to verify', file=sys.stderr)
            return 2
        return verify(out_dir, progress=not a.no_progress)
    return 0


if __name__ == '__main__':
    sys.exit(main())
