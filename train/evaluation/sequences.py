"""Readers for evaluation sequences in the public layouts (OTB, GOT-10k, LaSOT).

- OTB: `<root>/<seq>/img/*.jpg` + `<seq>/groundtruth_rect.txt` (x,y,w,h separated by commas,
  tabs or spaces); sequences with several targets have `groundtruth_rect.<k>.txt` and become
  `<seq>-<k>`.
- GOT-10k: `<root>/<seq>/*.jpg` + `groundtruth.txt` (+ optional `absence.label`, one 0/1 per
  frame, 1 = absent; optional `list.txt` in the root gives the order).  The test split has only
  the first box: such sequences are tracked but have no metrics (`Sequence.has_full_gt`).
- LaSOT: `<root>/<class>-<n>/img/*.jpg` + `groundtruth.txt` + `full_occlusion.txt` and
  `out_of_view.txt` (comma-separated 0/1); `<root>/<class>/<class>-<n>/` is accepted as well.
  A frame is visible unless fully occluded or out of view.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ('otb', 'got10k', 'lasot')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


@dataclass
class Sequence:
    """One video: frame paths, ground truth (N, 4) x,y,w,h and optional visibility flags."""
    name: str
    frames: list
    gt: np.ndarray
    visible: np.ndarray | None = None

    @property
    def init_box(self):
        return [float(v) for v in self.gt[0]]

    @property
    def has_full_gt(self) -> bool:
        return len(self.gt) == len(self.frames)

    def __len__(self):
        return len(self.frames)


def read_boxes(path) -> np.ndarray:
    """(N, 4) float64 boxes from a text file; values split on commas, tabs or spaces."""
    path = Path(path)
    rows = []
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
    if not rows:
        raise ValueError(f'{path}: no boxes')
    return np.asarray(rows, dtype=np.float64)


def read_flags(path) -> np.ndarray:
    """0/1 flags from a file (one per line or comma separated) as a bool array."""
    path = Path(path)
    text = path.read_text()
    try:
        return np.asarray([int(float(v)) for v in re.split(r'[,\s]+', text.strip()) if v]) != 0
    except ValueError:
        raise ValueError(f'{path}: expected 0/1 flags, got {text[:60]!r}') from None


def list_images(folder) -> list:
    folder = Path(folder)
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f'{folder}: no images')
    return frames


def _check_lengths(name, frames, gt, gt_path, allow_first_only=False):
    if len(gt) == len(frames) or (allow_first_only and len(gt) == 1):
        return
    raise ValueError(f'{gt_path}: {len(gt)} boxes but {len(frames)} images for sequence {name!r}')


def load_otb(root) -> list:
    root = Path(root)
    seqs = []
    for d in sorted(p for p in root.iterdir() if (p / 'img').is_dir()):
        frames = list_images(d / 'img')
        single = d / 'groundtruth_rect.txt'
        gts = [(d.name, single)] if single.is_file() else [
            (f'{d.name}-{m.group(1)}', p) for p in sorted(d.glob('groundtruth_rect.*.txt'))
            if (m := re.fullmatch(r'groundtruth_rect\.(\d+)\.txt', p.name))]
        if not gts:
            raise ValueError(f'{d}: no groundtruth_rect.txt')
        for name, gt_path in gts:
            gt = read_boxes(gt_path)
            _check_lengths(name, frames, gt, gt_path)
            seqs.append(Sequence(name, frames, gt))
    return seqs


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
        gt = read_boxes(gt_path)
        _check_lengths(name, frames, gt, gt_path, allow_first_only=True)
        visible = None
        absence = d / 'absence.label'
        if absence.is_file() and len(gt) == len(frames):
            flags = read_flags(absence)
            if len(flags) != len(frames):
                raise ValueError(f'{absence}: {len(flags)} flags for {len(frames)} frames')
            visible = ~flags
        seqs.append(Sequence(name, frames, gt, visible))
    return seqs


def load_lasot(root) -> list:
    root = Path(root)
    dirs = [p for p in root.iterdir() if (p / 'img').is_dir()]
    dirs += [q for p in root.iterdir() if p.is_dir() for q in p.iterdir() if (q / 'img').is_dir()]
    seqs = []
    for d in sorted(dirs, key=lambda p: p.name):
        gt_path = d / 'groundtruth.txt'
        frames = list_images(d / 'img')
        gt = read_boxes(gt_path)
        _check_lengths(d.name, frames, gt, gt_path)
        visible = np.ones(len(frames), bool)
        for flag_name in ('full_occlusion.txt', 'out_of_view.txt'):
            if (d / flag_name).is_file():
                flags = read_flags(d / flag_name)
                if len(flags) != len(frames):
                    raise ValueError(f'{d / flag_name}: {len(flags)} flags for {len(frames)} frames')
                visible &= ~flags
        seqs.append(Sequence(d.name, frames, gt, visible))
    return seqs


LOADERS = {'otb': load_otb, 'got10k': load_got10k, 'lasot': load_lasot}


def load_sequences(root, fmt: str) -> list:
    """Sequences under `root` in layout `fmt` (otb | got10k | lasot)."""
    if fmt not in LOADERS:
        raise ValueError(f'unknown dataset format {fmt!r}; expected one of {FORMATS}')
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset root not found: {root}')
    seqs = LOADERS[fmt](root)
    if not seqs:
        raise ValueError(f'no {fmt} sequences found under {root}')
    return seqs
