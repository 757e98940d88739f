"""Synthetic YouTube-BoundingBoxes (YTB) in its raw layout (docs/datasets.md): the detection CSV and
the frames as youtube-bb-utility writes them.

Rows are grouped by video, then object, then time (1 s apart); coordinates are normalised with
6 decimals, ``absent`` rows have -1.0. One JPEG per CSV row (absent rows too), so two objects at one
timestamp give two identical images. Frames are 16:9 (384x216 unless ``size`` is given); one class
per video, 1-2 objects per video.
"""
from __future__ import annotations

from ..fileio import atomic_write
from .faults import BOX_FAULTS, IMAGE_FAULTS, break_box, faults_for_video, video_faults
from .scene import Scene, random_stream, track_schedules

_YTB_CLASSES = ((0, 'person'), (1, 'bird'), (2, 'bicycle'), (3, 'boat'),
                (10, 'horse'), (13, 'airplane'), (19, 'dog'), (23, 'car'))


def _youtube_id(rng):
    alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    return ''.join(alphabet[int(k)] for k in rng.integers(0, len(alphabet), 11))


def write_ytb(out, videos, frames, seed, size, broken, bar):
    w, h = size
    lines = []
    frames_root = 'yt_bb_detection_train'
    for v in range(videos):
        rng = random_stream(seed, 'YTB', v)
        ytid = _youtube_id(rng)
        class_id, class_name = _YTB_CLASSES[int(rng.integers(len(_YTB_CLASSES)))]
        n_obj = int(rng.integers(1, 3))
        start_ms = int(rng.integers(0, 300)) * 1000
        # annotations are 1 s apart: the objects move about 1.7x further between rows
        scene = Scene(rng, size, frames, n_obj, decimals=6, speed=1.7,
                      schedules=track_schedules(v, n_obj))
        kinds = faults_for_video(v, videos, broken, IMAGE_FAULTS,
                                  ('malformed_csv_row',) + BOX_FAULTS)
        faults = video_faults(scene, kinds)
        images = [scene.frame(f) for f in range(frames)]
        for obj in range(n_obj):
            for f in range(frames):
                ts = start_ms + 1000 * f
                ann = next((a for a in scene.annotations(f) if a.track == obj), None)
                fault = faults.get(f) if ann is not None and obj == scene.annotations(f)[0].track else None
                rel = f'{frames_root}/{class_id}/{ytid}_{ts}_{class_id}_{obj}.jpg'
                key = dict(youtube_id=ytid, object_id=obj, timestamp_ms=ts)
                image_fault = fault if fault in IMAGE_FAULTS else None
                readable = out.image(rel, images[f], image_fault, **key)
                if ann is None:
                    lines.append(f'{ytid},{ts},{class_id},{class_name},{obj},absent,-1.0,-1.0,-1.0,-1.0')
                    continue
                x1, y1, x2, y2 = (float(b) for b in ann.box)
                if fault in BOX_FAULTS:
                    x1, y1, x2, y2 = break_box(fault, (x1, y1, x2, y2), w, h)
                    out.fault(fault, 'yt_bb_detection_train.csv', line=len(lines) + 1, **key)
                nx1, nx2, ny1, ny2 = (round(c / d, 6) for c, d in ((x1, w), (x2, w), (y1, h), (y2, h)))
                lines.append(f'{ytid},{ts},{class_id},{class_name},{obj},present,'
                             f'{nx1},{nx2},{ny1},{ny2}')
                out.count(1, int(readable and fault not in BOX_FAULTS))
                if fault == 'malformed_csv_row':
                    lines.append(f'{ytid},{ts}x,{class_id},{class_name}')
                    out.fault(fault, 'yt_bb_detection_train.csv', line=len(lines))
        out.totals['videos'] += 1
        bar.update()
    atomic_write(out.root / 'yt_bb_detection_train.csv', '\n'.join(lines) + '\n')

