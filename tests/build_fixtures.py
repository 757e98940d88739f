"""Tiny hand-made raw VID (official layout) with known defects, for the shard builder tests; a build
killed mid-way."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

H, W = 240, 320


def _box(f, t):
    x, y = 20 + 8 * f + 60 * t, 30 + 4 * f + 10 * t
    return (x, y, x + 50 + 3 * t, y + 40)


# video -> frame -> [(trackid, box)]; designed defects noted inline
def _layout():
    v = {}
    v['a/vid0'] = {f: [(0, _box(f, 0))] + ([(1, _box(f, 1))] if f in (0, 1, 2, 4) else [])  # t1: run 0-2, singleton 4
                   + [(2, (50, 50, 50, 90) if f == 0 else _box(f, 2))] for f in range(6)}  # t2 f0 degenerate
    v['a/vid1'] = {f: [(0, _box(f, 0)), (1, _box(f, 1))] + [(3, (400, 10, 450, 60) if f == 5 else _box(f, 2))]
                   for f in range(6)}  # frame 2 image truncated; t3 f5 outside the 320x240 frame
    v['b/vid2'] = {f: [(0, _box(f, 0))] for f in range(7)}  # frame 3 XML malformed; frame 6 image missing
    return v


def _write_xml(path, objs):
    o = ''.join(f'<object><trackid>{t}</trackid><name>n01</name><bndbox><xmax>{b[2]}</xmax><xmin>{b[0]}</xmin>'
                f'<ymax>{b[3]}</ymax><ymin>{b[1]}</ymin></bndbox><occluded>0</occluded></object>' for t, b in objs)
    path.write_text(f'<annotation><folder>x</folder><filename>{path.stem}</filename>'
                    f'<size><width>{W}</width><height>{H}</height></size>{o}</annotation>')


def make_raw_vid(root: Path, layout=None, seed=0):
    rng = np.random.default_rng(seed)
    for video, frames in (layout or _layout()).items():
        d, a = root / 'Data/VID/train' / video, root / 'Annotations/VID/train' / video
        d.mkdir(parents=True)
        a.mkdir(parents=True)
        for f, objs in frames.items():
            img = cv2.resize(rng.integers(0, 256, (14, 18, 3)).astype(np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(d / f'{f:06d}.JPEG'), img)
            _write_xml(a / f'{f:06d}.xml', objs)
    if layout is None:
        jpg = root / 'Data/VID/train/a/vid1/000002.JPEG'
        jpg.write_bytes(jpg.read_bytes()[:300])
        (root / 'Annotations/VID/train/b/vid2/000003.xml').write_text('<annotation><object><trackid>0</trackid')
        (root / 'Data/VID/train/b/vid2/000006.JPEG').unlink()
    return root


def kill_build_after(args, commits: int):
    """Run `tools/build_lmdb.py ARGS --verbose` and SIGKILL it and its crop workers once `commits`
    videos are committed (a real crash mid-build); returns the exit status."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / 'tools/build_lmdb.py'), *map(str, args), '--verbose']
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    committed = 0
    for line in proc.stdout:
        committed += line.startswith('committed')
        if committed == commits:
            os.killpg(proc.pid, signal.SIGKILL)  # the builder and its pool workers, mid-build
            break
    proc.wait()
    proc.stdout.close()
    return proc.returncode
