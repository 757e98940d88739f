"""Readers for evaluation sequences in the public layouts (OTB, GOT-10k, LaSOT).

- OTB: `<root>/<seq>/img/*.jpg` + `<seq>/groundtruth_rect.txt` (x,y,w,h separated by commas,
  tabs or spaces); sequences with several targets have `groundtruth_rect.<k>.txt` and become
  `<seq>-<k>` (Jogging-1, Jogging-2; an empty file, as Human4's `.1`, is skipped).  Sequences
  that the benchmark evaluates on part of their images are cut to its start/end frames
  (`OTB_FRAME_RANGES`).
- Index JSON (PySOT toolkit, e.g. `OTB100.json`): `{video: {"video_dir", "init_rect",
  "img_names": [paths relative to the root], "gt_rect": [[x,y,w,h], ...], "attr"}}`; when given
  (or, for OTB, when the root holds exactly one such `*.json`) it alone defines the sequences.
- GOT-10k: `<root>/<seq>/*.jpg` + `groundtruth.txt` (+ optional `cover.label`, 0..8 per frame,
  0 = not visible; `absence.label`, 1 = absent; `meta_info.ini` with `resolution: (w, h)`;
  optional `list.txt` in the root gives the order).  A frame is visible when its cover is > 0
  (the official toolkit's rule), else when it is not marked absent.  The test split has only
  the first box: such sequences are tracked but have no metrics (`Sequence.has_full_gt`).
- LaSOT: `<root>/<class>-<n>/img/*.jpg` + `groundtruth.txt` + `full_occlusion.txt` and
  `out_of_view.txt` (comma-separated 0/1); `<root>/<class>/<class>-<n>/` is accepted as well.
  A frame is visible unless fully occluded or out of view.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FORMATS = ('otb', 'got10k', 'lasot')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')

# OTB sequences evaluated on part of their folder: (first, last) 1-based image numbers of the
# benchmark's range (OTB toolkit configSeqs100.m startFrame/endFrame, as listed in pytracking's
# otbdataset.py; David/Football1/Freeman3/Freeman4/Diving also in got10k-toolkit's otb.py).
# Tiger1's box file covers images 1-354 and the benchmark omits the first 5 (initOmit).
OTB_FRAME_RANGES = {
    'David': (300, 770), 'Football1': (1, 74), 'Freeman3': (1, 460), 'Freeman4': (1, 283),
    'Diving': (1, 215), 'Tiger1': (6, 354), 'BlurCar1': (247, 988), 'BlurCar3': (3, 359),
    'BlurCar4': (18, 397),
}


def read_image(path) -> np.ndarray | None:
    """A frame as BGR uint8, or None when the file cannot be read or decoded (the protocol
    decides what that means: OPE repeats the previous box, VOT stops with an error)."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def image_size(path) -> tuple:
    """(width, height) of an image file."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read {path} to find the image size')
    return img.shape[1], img.shape[0]


@dataclass
class Sequence:
    """One video of a one-pass dataset: frame paths, ground truth (N, 4) x,y,w,h (GOT-10k's test
    split: the first box only) and optional visibility flags.

    The same field names as `track.vot.datasets.VOTSequence` (name, frames, groundtruth, size,
    read_frame).  `init_source` says where the first box was read ("file:line"), for error
    messages; GOT-10k sequences also carry `cover` (0..8 per frame) and `size` (width, height,
    from meta_info.ini) for its official figures; `frame_size()` reads the first frame when the
    layout records no size.
    """
    name: str
    frames: list
    groundtruth: np.ndarray
    visible: np.ndarray | None = None
    init_source: str = ''
    cover: np.ndarray | None = None
    size: tuple | None = None

    @property
    def init_box(self):
        return [float(v) for v in self.groundtruth[0]]

    @property
    def has_full_gt(self) -> bool:
        return len(self.groundtruth) == len(self.frames)

    def __len__(self):
        return len(self.frames)

    def read_frame(self, i: int) -> np.ndarray | None:
        """Frame i as BGR uint8, None if it cannot be read (`read_image`)."""
        return read_image(self.frames[i])

    def frame_size(self) -> tuple:
        """(width, height): `size`, else that of the first frame."""
        return self.size or image_size(self.frames[0])


def read_boxes(path) -> np.ndarray:
    """(N, 4) float64 boxes from a text file; values split on commas, tabs or spaces."""
    return read_boxes_with_lines(path)[0]


def read_boxes_with_lines(path) -> tuple:
    """(boxes (N, 4) float64, the 1-based line number of each box); blank lines are skipped."""
    path = Path(path)
    rows, numbers = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = [p for p in re.split(r'[,\s]+', line) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f'{path}:{lineno}: not numbers: {line!r}') from None
        if len(values) != 4:
            raise ValueError(f'{path}:{lineno}: expected 4 values x,y,w,h, got {len(values)}: {line!r}')
        rows.append(values)
        numbers.append(lineno)
    if not rows:
        raise ValueError(f'{path}: no boxes')
    return np.asarray(rows, dtype=np.float64), numbers


def check_init_box(seq: Sequence) -> Sequence:
    """`seq` unchanged if its first box can start a tracker (finite, w and h > 0), else a
    ValueError naming the file, line and sequence."""
    box = np.asarray(seq.groundtruth[0], dtype=np.float64)
    if not (np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0):
        shown = ','.join(f'{v:g}' for v in box)
        raise ValueError(f'{seq.init_source or seq.name}: sequence {seq.name!r}: first box {shown} cannot '
                         'start a tracker (x, y must be finite numbers and w, h > 0)')
    return seq


def read_flags(path, integer: bool = False) -> np.ndarray:
    """0/1 flags from a file (one per line or comma separated) as a bool array, or with
    `integer` the values themselves (GOT-10k's 0..8 cover levels)."""
    path = Path(path)
    text = path.read_text()
    try:
        values = np.asarray([int(float(v)) for v in re.split(r'[,\s]+', text.strip()) if v], dtype=np.int64)
    except ValueError:
        raise ValueError(f'{path}: expected {"integer labels" if integer else "0/1 flags"}, '
                         f'got {text[:60]!r}') from None
    return values if integer else values != 0


def list_images(folder) -> list:
    folder = Path(folder)
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f'{folder}: no images')
    return frames


def _check_lengths(name, frames, gt, gt_path, allow_first_only=False, hint=''):
    if len(gt) == len(frames) or (allow_first_only and len(gt) == 1):
        return
    raise ValueError(f'{gt_path}: {len(gt)} boxes but {len(frames)} images for sequence {name!r}{hint}')


def otb_benchmark_range(folder_name, frames, gt, ranges=OTB_FRAME_RANGES):
    """`frames` and `gt` cut to the OTB benchmark's start/end frames of sequence `folder_name`
    (`ranges`: {name: (first, last)}); unchanged if not listed.
    Images are chosen by the number in their file name (`0300.jpg`), else by position; boxes
    are used as they are when they cover the range, cut when they start at image 1 (Tiger1)."""
    if folder_name not in ranges:
        return frames, gt
    first, last = ranges[folder_name]
    stems = [Path(f).stem for f in frames]
    if all(s.isdigit() for s in stems):
        frames = [f for f, s in zip(frames, stems) if first <= int(s) <= last]
    elif len(frames) >= last:
        frames = frames[first - 1:last]
    if len(gt) != last - first + 1 and len(gt) >= last:
        gt = gt[first - 1:last]
    return frames, gt


def otb_targets(folder) -> list:
    """[(sequence name, box file)] of an OTB folder: `groundtruth_rect.txt`, or one sequence
    `<folder>-<k>` per non-empty `groundtruth_rect.<k>.txt`."""
    folder = Path(folder)
    single = folder / 'groundtruth_rect.txt'
    if single.is_file():
        return [(folder.name, single)]
    numbered = sorted((int(m.group(1)), p) for p in folder.glob('groundtruth_rect.*.txt')
                      if (m := re.fullmatch(r'groundtruth_rect\.(\d+)\.txt', p.name)))
    targets = [(f'{folder.name}-{k}', p) for k, p in numbered if p.read_text().strip()]
    if not targets:
        raise ValueError(f'{folder}: no groundtruth_rect.txt (nor non-empty groundtruth_rect.<k>.txt)')
    return targets


def load_otb(root, ranges=OTB_FRAME_RANGES) -> list:
    """OTB folders under `root`; `ranges` overrides `OTB_FRAME_RANGES` (see `otb_benchmark_range`)."""
    root = Path(root)
    seqs = []
    for d in sorted(p for p in root.iterdir() if (p / 'img').is_dir()):
        images = list_images(d / 'img')
        for name, gt_path in otb_targets(d):
            boxes, lines = read_boxes_with_lines(gt_path)
            frames, gt = otb_benchmark_range(d.name, images, boxes, ranges)
            hint = '' if d.name in ranges else f' (folder {d.name!r} has no OTB start/end frames)'
            _check_lengths(name, frames, gt, gt_path, hint=hint)
            first = 0 if gt is boxes else ranges[d.name][0] - 1  # the box file was cut to the range
            seqs.append(Sequence(name, frames, gt, init_source=f'{gt_path}:{lines[first]}'))
    return seqs


def _is_index(data) -> bool:
    return (isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and 'img_names' in v and 'gt_rect' in v for v in data.values()))


def find_index(root):
    """The one PySOT-toolkit index JSON (`{video: {"img_names", "gt_rect", ...}}`) directly in
    `root`, or None; other JSON files are ignored, several index files are an error."""
    found = []
    for path in sorted(Path(root).glob('*.json')):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if _is_index(data):
            found.append(path)
    if len(found) > 1:
        raise ValueError(f'{root}: several index JSON files {[p.name for p in found]}; choose one with --index')
    return found[0] if found else None


def load_index(root, index) -> list:
    """Sequences listed in a PySOT-toolkit index JSON; image paths are relative to `root`."""
    root, index = Path(root), Path(index)
    try:
        data = json.loads(index.read_text())
    except ValueError as e:
        raise ValueError(f'{index}: not valid JSON: {e}') from None
    if not _is_index(data):
        raise ValueError(f'{index}: not a PySOT index: expected {{video: {{"img_names": [...], '
                         f'"gt_rect": [[x,y,w,h], ...], ...}}}}')
    seqs = []
    for name, entry in data.items():
        try:
            gt = np.asarray(entry['gt_rect'], dtype=np.float64)
        except (ValueError, TypeError):
            gt = np.empty((0, 0))
        if gt.ndim != 2 or gt.shape[1:] != (4,) or not len(gt):
            raise ValueError(f'{index}: video {name!r}: gt_rect must be a non-empty list of [x,y,w,h]')
        frames = [root / n for n in entry['img_names']]
        _check_lengths(name, frames, gt, f'{index}: video {name!r}')
        missing = [f for f in frames if not f.is_file()]
        if missing:
            raise FileNotFoundError(f'{index}: video {name!r}: {len(missing)} of {len(frames)} images '
                                    f'missing under {root}, first {missing[0]}')
        seqs.append(Sequence(name, frames, gt, init_source=f'{index}: video {name!r} gt_rect[0]'))
    return seqs


def resolve_index(root, fmt: str, index=None):
    """The index JSON to use: `index` (a path, or a file name in `root`), else for OTB the one
    found by `find_index`, else None (folder layout)."""
    if index is not None:
        index = Path(index)
        if not index.is_file() and (Path(root) / index).is_file():
            index = Path(root) / index
        if not index.is_file():
            raise FileNotFoundError(f'index file not found: {index}')
        return index
    return find_index(root) if fmt == 'otb' else None


def read_resolution(path) -> tuple:
    """(width, height) from a GOT-10k `meta_info.ini` line `resolution: (w, h)`."""
    path = Path(path)
    for line in path.read_text().splitlines():
        key, _, value = line.partition(':')
        if key.strip() == 'resolution':
            numbers = re.findall(r'\d+(?:\.\d+)?', value)
            if len(numbers) == 2:
                return float(numbers[0]), float(numbers[1])
            break
    raise ValueError(f'{path}: no "resolution: (width, height)" line')


def _frame_flags(path, frames, integer=False):
    flags = read_flags(path, integer)
    if len(flags) != len(frames):
        raise ValueError(f'{path}: {len(flags)} flags for {len(frames)} frames')
    return flags


def load_got10k(root) -> list:
    root = Path(root)
    list_file = root / 'list.txt'
    if list_file.is_file():
        names = [n.strip() for n in list_file.read_text().splitlines() if n.strip()]
    else:
        names = sorted(p.name for p in root.iterdir() if (p / 'groundtruth.txt').is_file())
    seqs = []
    for name in names:
        d = root / name
        gt_path = d / 'groundtruth.txt'
        frames = list_images(d)
        gt, lines = read_boxes_with_lines(gt_path)
        _check_lengths(name, frames, gt, gt_path, allow_first_only=True)
        visible = cover = size = None
        if len(gt) == len(frames):
            if (d / 'cover.label').is_file():
                cover = _frame_flags(d / 'cover.label', frames, integer=True)
                visible = cover > 0
            elif (d / 'absence.label').is_file():
                visible = ~_frame_flags(d / 'absence.label', frames)
        if (d / 'meta_info.ini').is_file():
            size = read_resolution(d / 'meta_info.ini')
        seqs.append(Sequence(name, frames, gt, visible, f'{gt_path}:{lines[0]}', cover, size))
    return seqs


def load_lasot(root) -> list:
    root = Path(root)
    dirs = [p for p in root.iterdir() if (p / 'img').is_dir()]
    dirs += [q for p in root.iterdir() if p.is_dir() for q in p.iterdir() if (q / 'img').is_dir()]
    seqs = []
    for d in sorted(dirs, key=lambda p: p.name):
        gt_path = d / 'groundtruth.txt'
        frames = list_images(d / 'img')
        gt, lines = read_boxes_with_lines(gt_path)
        _check_lengths(d.name, frames, gt, gt_path)
        visible = np.ones(len(frames), bool)
        for flag_name in ('full_occlusion.txt', 'out_of_view.txt'):
            if (d / flag_name).is_file():
                visible &= ~_frame_flags(d / flag_name, frames)
        seqs.append(Sequence(d.name, frames, gt, visible, f'{gt_path}:{lines[0]}'))
    return seqs


LOADERS = {'otb': load_otb, 'got10k': load_got10k, 'lasot': load_lasot}


def load_dataset(root, fmt: str, index=None) -> tuple:
    """(sequences, the index JSON they came from or None): the sequences under `root` in layout
    `fmt` (otb | got10k | lasot), or from the index JSON chosen by `resolve_index` (explicit
    `index`, or auto-detected for OTB), each with a usable first box."""
    if fmt not in LOADERS:
        raise ValueError(f'unknown dataset format {fmt!r}; expected one of {FORMATS}')
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset root not found: {root}')
    index = resolve_index(root, fmt, index)
    seqs = load_index(root, index) if index is not None else LOADERS[fmt](root)
    if not seqs:
        raise ValueError(f'no {fmt} sequences found under {root}')
    return [check_init_box(seq) for seq in seqs], index


def load_sequences(root, fmt: str, index=None) -> list:
    """The sequences of `load_dataset`."""
    return load_dataset(root, fmt, index)[0]
