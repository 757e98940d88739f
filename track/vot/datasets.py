"""VOT-format sequence folders, as vot-toolkit reads them.

`<root>/list.txt` names the sequences (without it: every sub-folder holding a `groundtruth.txt`,
sorted).  A sequence folder holds `groundtruth.txt` (one region a line: `x,y,w,h` or
`x1,y1,...,x4,y4`), images named by a printf pattern counted from 1 (`color/%08d.jpg`) and an
optional `sequence` file of `key=value` lines: `channels.color` (the pattern, relative to the
folder), `width`, `height` (the image size that bounds overlaps; read from the first image when
absent) and `length`.  Folders without a `sequence` file (the VOT2016-2018 downloads) use
`%08d.jpg` in the folder itself, else `color/%08d.jpg`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from track.datasets import read_image
from track.vot.regions import init_box, parse_region

DEFAULT_PATTERN = 'color/%08d.jpg'
_PATTERN_RE = re.compile(r'%0?\d*d')


@dataclass
class VOTSequence:
    """One VOT sequence: frame paths (frame 0 first), one ground-truth region per frame (see
    `track.vot.regions`) and the image size (width, height) that bounds overlaps.  The same field
    names as the one-pass `track.datasets.Sequence` (name, frames, groundtruth, size, read_frame)."""
    name: str
    frames: list
    groundtruth: list
    size: tuple
    sources: list = field(default_factory=list)  # "file:line" of each frame's ground-truth region

    def __len__(self) -> int:
        return len(self.groundtruth)

    def read_frame(self, i: int) -> np.ndarray | None:
        """Frame i as BGR uint8, None if it cannot be read (as `track.datasets.Sequence`)."""
        return read_image(self.frames[i])


def read_properties(path: Path) -> dict:
    """`key=value` lines of a VOT `sequence` file."""
    props = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition('=')
        if sep and key.strip():
            props[key.strip()] = value.strip()
    return props


def read_groundtruth(path: Path) -> list:
    """One region per non-empty line of a VOT ground-truth (or result) text file."""
    return _read_regions(path)[0]


def _read_regions(path: Path) -> tuple:
    """(regions, "file:line" of each) of a VOT region file."""
    if not path.is_file():
        raise FileNotFoundError(f'ground truth not found: {path}')
    lines = [(f'{path}:{n}', line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    return [parse_region(line, where) for where, line in lines], [where for where, _ in lines]


def _frames(folder: Path, pattern: str, length: int | None, where: str) -> list:
    if len(_PATTERN_RE.findall(pattern)) != 1:
        raise ValueError(f'{where}: image pattern {pattern!r} needs exactly one %d field (e.g. color/%08d.jpg)')
    if length is not None:
        return [folder / (pattern % i) for i in range(1, length + 1)]
    frames = []
    while (folder / (pattern % (len(frames) + 1))).is_file():
        frames.append(folder / (pattern % (len(frames) + 1)))
    return frames


def _int_property(props: dict, key: str, where: Path):
    if key not in props:
        return None
    try:
        value = int(props[key])
    except ValueError:
        raise ValueError(f'{where}: {key}={props[key]!r} is not an integer') from None
    if value <= 0:
        raise ValueError(f'{where}: {key}={value} must be positive')
    return value


def load_sequence(folder, need_images: bool = True) -> VOTSequence:
    """One VOT sequence folder.  `need_images=False` (scoring stored results) accepts missing
    images when the `sequence` file gives width, height and length."""
    folder = Path(folder)
    meta_path = folder / 'sequence'
    props = read_properties(meta_path) if meta_path.is_file() else {}
    if 'channels.color' in props:
        pattern = props['channels.color']
    elif not props and (folder / '00000001.jpg').is_file():
        pattern = '%08d.jpg'
    else:
        pattern = DEFAULT_PATTERN
    length = _int_property(props, 'length', meta_path)
    width, height = _int_property(props, 'width', meta_path), _int_property(props, 'height', meta_path)
    frames = _frames(folder, pattern, length, meta_path if props else folder)
    groundtruth, sources = _read_regions(folder / 'groundtruth.txt')
    if not frames:
        raise FileNotFoundError(f'sequence {folder.name!r}: no images {folder / pattern} (counted from 1)')
    if len(groundtruth) != len(frames):
        raise ValueError(f'sequence {folder.name!r}: {len(groundtruth)} ground-truth regions in '
                         f'{folder / "groundtruth.txt"} but {len(frames)} images ({folder / pattern})')
    if need_images or width is None or height is None:
        missing = [f for f in frames if not f.is_file()]
        if missing:
            raise FileNotFoundError(f'sequence {folder.name!r}: {len(missing)} of {len(frames)} images '
                                    f'missing, first {missing[0]}')
    if width is None or height is None:
        img = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'sequence {folder.name!r}: cannot read {frames[0]}')
        height, width = img.shape[:2]
    if need_images:  # to be tracked: the first region must start a tracker (re-initialisations: the protocol)
        try:
            init_box(groundtruth[0])
        except ValueError as e:
            raise ValueError(f'{sources[0]}: sequence {folder.name!r}: first region: {e}') from None
    return VOTSequence(folder.name, frames, groundtruth, (width, height), sources)


def sequence_names(root) -> list:
    """Names from `<root>/list.txt`, else the sub-folders holding a groundtruth.txt."""
    root = Path(root)
    list_file = root / 'list.txt'
    if list_file.is_file():
        return [n.strip() for n in list_file.read_text().splitlines() if n.strip()]
    return sorted(p.name for p in root.iterdir() if (p / 'groundtruth.txt').is_file())


def load_vot(root, need_images: bool = True) -> list:
    """The sequences of a VOT dataset folder (e.g. a workspace's `sequences/`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'VOT dataset root not found: {root}')
    names = sequence_names(root)
    if not names:
        raise ValueError(f'no VOT sequences under {root} (no list.txt and no <seq>/groundtruth.txt)')
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f'{root / "list.txt"}: {len(missing)} listed sequence folder(s) '
                                f'missing, first {missing[0]!r}')
    return [load_sequence(root / n, need_images) for n in names]
