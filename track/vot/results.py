"""Trajectories in vot-toolkit's results layout, so the toolkit reads our runs and we read its runs.

`<results>/<tracker>/<experiment>/<seq>/<seq>_<rep:03d>.txt`: one region a line (`1`
initialisation, `2` failure, `0` skipped, else `x,y,w,h` or a polygon), and
`<seq>_<rep:03d>_time.value`: seconds per frame, an empty line where skipped.  The toolkit 0.7.4
writes `.bin` by default (`VOT_RESULTS_BINARY`): a little-endian int16 version (1), uint32 count,
then per region a type byte (0 special uint32, 1 rectangle 4 float32, 2 polygon uint16 n + 2n
float32; 3 is a mask, not supported); it reads `.txt` first when both exist, and so do we.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write
from track.vot.regions import format_region, parse_region

EXPERIMENT = 'baseline'


def sequence_dir(results_root, tracker: str, seq: str, experiment: str = EXPERIMENT) -> Path:
    return Path(results_root) / tracker / experiment / seq


def trajectory_path(results_root, tracker: str, seq: str, repetition: int = 1,
                    experiment: str = EXPERIMENT) -> Path:
    """The text trajectory file of one run (repetition counted from 1)."""
    return sequence_dir(results_root, tracker, seq, experiment) / f'{seq}_{repetition:03d}.txt'


def write_trajectory(path, regions, times=None) -> Path:
    """Write a trajectory (and its `_time.value` when `times` is given), each file atomically."""
    path = Path(path)
    if times is not None:
        if len(times) != len(regions):
            raise ValueError(f'{len(times)} times for {len(regions)} regions')
        atomic_write(path.with_name(f'{path.stem}_time.value'),
                     ''.join(('' if t is None else repr(float(t))) + '\n' for t in times))
    atomic_write(path, ''.join(format_region(r) + '\n' for r in regions))
    return path


def _read_binary(path: Path) -> list:
    data = path.read_bytes()
    try:
        version, count = struct.unpack_from('<hI', data, 0)
        if version != 1:
            raise ValueError(f'version {version}')
        offset, regions = struct.calcsize('<hI'), []
        for _ in range(count):
            kind, = struct.unpack_from('<B', data, offset)
            offset += 1
            if kind == 0:
                code, = struct.unpack_from('<I', data, offset)
                offset += 4
                regions.append(int(code))
            elif kind == 1:
                regions.append(np.array(struct.unpack_from('<4f', data, offset), np.float64))
                offset += 16
            elif kind == 2:
                n, = struct.unpack_from('<H', data, offset)
                regions.append(np.array(struct.unpack_from(f'<{2 * n}f', data, offset + 2), np.float64))
                offset += 2 + 8 * n
            else:
                raise ValueError(f'region type {kind} (3 is a mask: not supported)')
    except (struct.error, ValueError) as e:
        raise ValueError(f'{path}: not a vot-toolkit binary trajectory ({e})') from None
    return regions


def read_trajectory(path) -> list:
    """The regions of a `.txt` or `.bin` trajectory file."""
    path = Path(path)
    if path.suffix == '.bin':
        return _read_binary(path)
    return [parse_region(line, f'{path}:{n}') for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]


def read_runs(results_root, tracker: str, seq: str, experiment: str = EXPERIMENT) -> list:
    """Every stored repetition of one tracker on one sequence, in repetition order ([] if none)."""
    folder = sequence_dir(results_root, tracker, seq, experiment)
    if not folder.is_dir():
        return []
    found = {}
    pattern = re.compile(re.escape(seq) + r'_(\d{3})\.(txt|bin)$')
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(2) == 'txt' or int(m.group(1)) not in found):
            found[int(m.group(1))] = p
    return [read_trajectory(found[k]) for k in sorted(found)]
