"""`make_dataset` / `make_all`: synthetic training datasets, each in its official raw layout
(docs/datasets.md), with the deliberate faults of `faults`; names, defaults and argument checks
shared by every writer of the package."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .coco import write_coco
from .faults import DatasetFiles
from .got10k_lasot import write_got10k, write_lasot
from .imagenet import write_det, write_vid
from .vos import write_davis, write_ytbvos
from .youtube_bb import write_ytb

DATASETS = ('VID', 'COCO', 'DET', 'YTB', 'GOT10K', 'LASOT', 'YTBVOS', 'DAVIS')
_ALIASES = {'YOUTUBEBB': 'YTB', 'YT_BB': 'YTB', 'GOT-10K': 'GOT10K', 'YOUTUBEVOS': 'YTBVOS', 'YTB_VOS': 'YTBVOS',
            'YOUTUBE-VOS': 'YTBVOS'}
# (videos or images, frames per video, frame size WxH)
DEFAULTS = {
    'VID': (4, 24, (320, 240)),
    'COCO': (16, 1, (320, 240)),
    'DET': (16, 1, (320, 240)),
    'YTB': (4, 16, (384, 216)),
    'GOT10K': (4, 24, (320, 240)),
    'LASOT': (4, 24, (320, 240)),
    'YTBVOS': (4, 12, (384, 216)),
    'DAVIS': (4, 16, (427, 240)),
    'EVAL': (4, 60, (320, 240)),
}
MARKERS = ('broken.json', 'SYNTH.json')  # files that identify our own output

_WRITERS = {'VID': write_vid, 'COCO': write_coco, 'DET': write_det, 'YTB': write_ytb,
            'GOT10K': write_got10k, 'LASOT': write_lasot, 'YTBVOS': write_ytbvos, 'DAVIS': write_davis}


def canonical_name(name: str) -> str:
    """Dataset name as used here (YOUTUBEBB -> YTB); ValueError for unknown names."""
    key = str(name).upper()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; expected one of {", ".join(DATASETS)}')
    return key


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    try:
        w, h = (int(p) for p in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'size {text!r} is not WIDTHxHEIGHT, e.g. 320x240') from None
    return w, h


def check_args(videos, frames, size, min_frames):
    """ValueError naming the first argument out of range."""
    if videos < 1:
        raise ValueError(f'videos must be >= 1, got {videos}')
    if frames < min_frames:
        raise ValueError(f'frames must be >= {min_frames}, got {frames}')
    if size[0] < 64 or size[1] < 64:
        raise ValueError(f'size must be at least 64x64, got {size[0]}x{size[1]}')


def prepare_root(root: Path, overwrite: bool):
    """An empty output folder: an earlier synthetic output (one with a MARKERS file) is replaced
    only with `overwrite`; any other non-empty folder is refused (FileExistsError)."""
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f'output directory {root} is not empty '
                                  '(pass overwrite=True / --force to replace earlier synthetic data)')
        if not any((root / m).exists() for m in MARKERS):
            raise FileExistsError(f'refusing to delete {root}: it has no {" or ".join(MARKERS)}, '
                                  'so it is not synthetic data written by this module')
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def make_dataset(name, out_dir, videos=None, frames=None, seed=0, size=None,
                 broken=True, overwrite=False, progress=False) -> dict:
    """Write dataset `name` (VID, COCO, DET, YTB, GOT10K, LASOT, YTBVOS, DAVIS) in its raw layout.

    `videos` is the number of images for COCO/DET; `frames` is ignored there.
    Defaults are in DEFAULTS. Returns the broken.json manifest plus `root` and
    `seconds`.
    """
    name = canonical_name(name)
    d_videos, d_frames, d_size = DEFAULTS[name]
    videos = d_videos if videos is None else int(videos)
    frames = d_frames if frames is None or name in ('COCO', 'DET') else int(frames)
    size = d_size if size is None else tuple(int(s) for s in size)
    check_args(videos, frames, size, 1 if name in ('COCO', 'DET') else 2)
    root = Path(out_dir)
    start = time.perf_counter()
    prepare_root(root, overwrite)
    out = DatasetFiles(root, name, int(seed), broken)
    total = videos + (3 if name == 'DET' else 0)
    with tqdm(total=total, desc=name, unit='video' if frames > 1 else 'image',
              disable=not progress, leave=False) as bar:
        extra = _WRITERS[name](out, videos, frames, int(seed), size, broken, bar)
    manifest = out.finish(extra)
    return dict(manifest, root=str(root), seconds=time.perf_counter() - start)


def make_all(out_dir, videos=None, frames=None, seed=0, size=None, broken=True,
             overwrite=False, progress=False) -> list[dict]:
    """Write every dataset into out_dir/<NAME>/; returns the per-dataset summaries."""
    return [make_dataset(n, Path(out_dir) / n, videos, frames, seed, size, broken,
                         overwrite, progress) for n in DATASETS]

