"""DAVIS sequences for the semi-supervised task, read as the official evaluation reads them.

Layout (the DAVIS 2017 release; DAVIS 2016's is accepted too):
    <root>/JPEGImages/<resolution>/<seq>/00000.jpg ...
    <root>/Annotations/<resolution>/<seq>/00000.png ...   indexed PNGs: pixel = object id
    <root>/ImageSets/<year>/<subset>.txt                  one sequence name a line
DAVIS 2016's own release lists `ImageSets/<resolution>/<subset>.txt` lines of image and mask
paths instead (`/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png`); the
sequence is read from the path.  Frames and masks are the sorted `*.jpg` / `*.png` of a
sequence folder, paired in order, and a result file is named after its mask (`00000.png`).

Ground truth, as the official code prepares it: pixels of value 255 (void) become background,
and the objects are ids 1..N with N the largest id in the first frame.  A split of year 2016 is
DAVIS 2016's single-object task: every non-zero pixel is the one object (DAVIS 2016's masks are
0/255; the 2017 release's several objects of the same sequences are merged), as the SiamMask
authors' evaluation does.  The test splits have only the first frame's masks: their sequences
are tracked but cannot be scored (`has_full_gt`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from track.vos.png import read_labels

__all__ = ['VOID_LABEL', 'VOSSequence', 'parse_split', 'load_davis', 'first_frame_objects']

VOID_LABEL = 255
SUBSETS = ('train', 'val', 'trainval', 'test-dev', 'test-challenge')


@dataclass
class VOSSequence:
    """One video: its frames (JPEGs), its masks (PNGs, sorted; the test splits hold only the
    first) and whether all objects count as one (DAVIS 2016)."""
    name: str
    frames: list
    annotations: list
    single_object: bool = False

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_ids(self) -> list:
        """The name of each frame without its extension ('00000'): the result file names."""
        return [Path(p).stem for p in self.frames]

    @property
    def mask_ids(self) -> list:
        """The name of each ground-truth mask without its extension (the frames scored)."""
        return [Path(p).stem for p in self.annotations]

    @property
    def has_full_gt(self) -> bool:
        """A mask for every frame (the train/val splits), so the sequence can be scored; the
        test splits have the first only."""
        return len(self.annotations) == len(self.frames)

    def read_frame(self, i: int) -> np.ndarray | None:
        """Frame i as BGR uint8, None if it cannot be decoded."""
        return cv2.imread(str(self.frames[i]), cv2.IMREAD_COLOR)

    def labels(self, i: int) -> np.ndarray:
        """(H, W) uint8 object ids of mask i: void (255) set to background; DAVIS 2016: 0/1."""
        labels = read_labels(self.annotations[i])
        if self.single_object:
            return (labels > 0).astype(np.uint8)
        labels = labels.copy()
        labels[labels == VOID_LABEL] = 0
        return labels

    def object_count(self) -> int:
        """N: the largest object id in the first frame's mask (the official rule)."""
        return int(self.labels(0).max())


def first_frame_objects(labels: np.ndarray) -> list:
    """The ids 1..N (N = the largest id) that have pixels in the first frame: the objects a
    semi-supervised tracker can start on; an id without pixels is scored but never tracked."""
    present = set(np.unique(labels).tolist())
    return [k for k in range(1, int(labels.max()) + 1) if k in present]


def parse_split(split: str) -> tuple:
    """'2017/val' -> ('2017', 'val'); the year is 2016 or 2017."""
    year, sep, subset = split.partition('/')
    if not sep or year not in ('2016', '2017') or subset not in SUBSETS:
        raise ValueError(f'split {split!r}: expected YEAR/SUBSET with YEAR 2016 or 2017 and SUBSET one of {SUBSETS}, '
                         'e.g. 2017/val')
    return year, subset


def _split_names(root: Path, year: str, subset: str, resolution: str) -> list:
    listing = root / 'ImageSets' / year / f'{subset}.txt'
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    legacy = root / 'ImageSets' / resolution / f'{subset}.txt'  # DAVIS 2016's own release
    if year == '2016' and legacy.is_file():
        names = []
        for n, line in enumerate(legacy.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = Path(line.split()[0]).parts
            if len(parts) < 2:
                raise ValueError(f'{legacy}:{n}: expected "/JPEGImages/<res>/<seq>/<frame>.jpg ...", got {line!r}')
            if parts[-2] not in names:
                names.append(parts[-2])
        return names
    raise FileNotFoundError(f'no sequence list for split {year}/{subset}: {listing} not found')


def load_davis(root, split: str = '2017/val', resolution: str = '480p', sequences=None) -> list:
    """The sequences of `split` ('2017/val', '2016/val', '2017/train', '2017/test-dev', ...) in
    the list's order, or only those named in `sequences`.  A missing folder, a sequence without
    frames or without a first mask, a first mask that is not the first frame's, or (with more
    masks than the first) a frame without its mask, is an error naming the path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'DAVIS root not found: {root}')
    year, subset = parse_split(split)
    names = _split_names(root, year, subset, resolution)
    if sequences:
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise ValueError(f'sequences {unknown} are not in split {split} of {root}')
        names = [s for s in names if s in set(sequences)]
    images, masks = root / 'JPEGImages' / resolution, root / 'Annotations' / resolution
    out = []
    for name in names:
        frames = sorted((images / name).glob('*.jpg'))
        if not frames:
            raise FileNotFoundError(f'no frames for sequence {name!r}: {images / name}/*.jpg')
        annotations = sorted((masks / name).glob('*.png'))
        if not annotations:
            raise FileNotFoundError(f'no masks for sequence {name!r}: {masks / name}/*.png')
        if annotations[0].stem != frames[0].stem:
            raise ValueError(f'{annotations[0]}: the first mask is not the first frame\'s ({frames[0].name})')
        if len(annotations) > 1:  # a train/val sequence: a mask for every frame, none else
            stems, masked = [p.stem for p in frames], {p.stem for p in annotations}
            missing = [s for s in stems if s not in masked]
            extra = sorted(masked - set(stems))
            if missing or extra:
                what = (f'no mask for frame(s) {", ".join(missing[:3])}' + (' ...' if len(missing) > 3 else '')
                        if missing else f'masks without a frame: {", ".join(extra[:3])}')
                raise ValueError(f'{masks / name}: {what}')
        out.append(VOSSequence(name, frames, annotations, single_object=year == '2016'))
    return out
