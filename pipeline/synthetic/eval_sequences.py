"""`make_eval`: held-out evaluation sequences in the OTB layout (see the README's tracking and
evaluation section) plus a PySOT-toolkit index:

    {seq}/img/{f+1:04d}.jpg
    {seq}/groundtruth_rect.txt     "x,y,w,h" ints a line (the box convention of `scene`)
    SYNTH.json                     {seq: {video_dir, init_rect, img_names, gt_rect, attr}}

Sequences ``Synth01``..; one slow, smooth target always fully inside the frame, one distractor
drawn behind it; the same object family as the training data but other random streams (new
instances).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from ..fileio import atomic_write
from .datasets import DEFAULTS, check_args, prepare_root
from .scene import Scene, encode_jpeg, int_box, random_stream


def make_eval(out_dir, videos=None, frames=None, seed=0, size=None,
              overwrite=False, progress=False) -> dict:
    """Write held-out OTB-layout sequences plus a PySOT-toolkit SYNTH.json index."""
    d_videos, d_frames, d_size = DEFAULTS['EVAL']
    videos = d_videos if videos is None else int(videos)
    frames = d_frames if frames is None else int(frames)
    size = d_size if size is None else tuple(int(s) for s in size)
    check_args(videos, frames, size, 2)
    root = Path(out_dir)
    start = time.perf_counter()
    prepare_root(root, overwrite)
    index = {}
    for v in tqdm(range(videos), desc='EVAL', unit='video', disable=not progress, leave=False):
        rng = random_stream(seed, 'EVAL', v)
        seq = f'Synth{v + 1:02d}'
        scene = Scene(rng, size, frames, 1, decimals=0, distractors=1, easy=True)
        rects, names = [], []
        for f in range(frames):
            rel = f'{seq}/img/{f + 1:04d}.jpg'
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode_jpeg(scene.frame(f)))
            x1, y1, x2, y2 = int_box(scene.annotations(f)[0].box)
            rects.append([x1, y1, x2 - x1, y2 - y1])
            names.append(rel)
        (root / seq / 'groundtruth_rect.txt').write_text(
            ''.join(','.join(map(str, r)) + '\n' for r in rects))
        index[seq] = dict(video_dir=seq, init_rect=rects[0], img_names=names, gt_rect=rects, attr=[])
    atomic_write(root / 'SYNTH.json', json.dumps(index) + '\n')
    return dict(dataset='EVAL', root=str(root), seed=int(seed), sequences=list(index),
                totals=dict(videos=videos, image_files=videos * frames),
                seconds=time.perf_counter() - start)

