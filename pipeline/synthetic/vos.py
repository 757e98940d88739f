"""Synthetic video object segmentation datasets in their raw layouts (docs/datasets.md): YouTube-VOS
(training data: ``tools/build_lmdb.py --dataset YTBVOS``) and DAVIS 2016/2017 (evaluation data).

Both store palette PNG annotations whose pixel value is the object id (1, 2, ...; 0 background;
the VOC colour map). The masks follow the rendered objects (`Scene.label_map`: a pixel belongs to
the topmost visible object covering at least half of it, so objects occlude one another); a video
has 1-3 objects over an unannotated distractor, and every video with several objects has frames
where one object hides part of another.

YTBVOS: ``train/JPEGImages/<video>/<frame>.jpg`` and ``train/Annotations/<video>/<frame>.png`` of
every 5th frame (names ``00000``, ``00005``, ...: YouTube-VOS is annotated at 6 fps), and
``train/meta.json`` = ``{"videos": {<video>: {"objects": {"<id>": {"category", "frames": [names]}}}}}``
listing the frames where each object has pixels; video ids are 10 hex digits; every third object
leaves the frame for a while. Faults: image faults in video 0, ``MASK_FAULTS`` in video 1.
Totals: ``annotations`` = object-frames listed in meta.json, ``valid_annotations`` = those a build
keeps (readable image and PNG, more than `YTBVOS_MIN_MASK_PIXELS` pixels), ``small_masks`` = those
with 1 to `YTBVOS_MIN_MASK_PIXELS` pixels (dropped by a build, as the authors' scripts drop them).

DAVIS (the 2017 release, which carries the 2016 sets): ``JPEGImages/480p/<seq>/<frame:05d>.jpg`` and
``Annotations/480p/<seq>/<frame:05d>.png`` for every frame, with 255 (void) on the 2-pixel band
along every object border; ``ImageSets/2017/{train,val}.txt`` (sequence names, one a line) and
``ImageSets/2016/{train,val}.txt`` (the single-object sequences of each). Even-numbered sequences
are val, odd ones train; sequences 0, 1 (mod 4) have one object, the others 2-3; every object is
visible in frame 0 (the semi-supervised task starts from it) and some leave and re-enter later.
Faults (only with ``broken``): a truncated JPEG in sequence 0, a corrupt and a missing PNG in
sequence 1, never in frame 0. Totals: ``annotations`` = object-frames, ``valid_annotations`` = those
of frames whose JPEG and PNG are both readable, ``objects``.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from ..fileio import atomic_write
from ..ingest.spec import YTBVOS_MIN_MASK_PIXELS
from .faults import IMAGE_FAULTS, MASK_FAULTS, faults_for_video, video_faults
from .scene import Scene, coverage, random_stream

YTBVOS_STEP = 5  # frame-name step of YouTube-VOS's annotated frames
VOID = 255
_CATEGORIES = ('person', 'dog', 'cat', 'horse', 'duck', 'car', 'giraffe', 'skateboard')
_DAVIS_WORDS = ('bear-walk', 'boat-drift', 'camel-run', 'car-loop', 'dog-leap', 'goat-climb', 'kite-pull',
                'swan-glide')
_MIN_FIRST_FRAME_PIXELS = 50


def _occluded(scene: Scene, i: int, ids) -> bool:
    """Whether a visible object of frame i loses over 10 % of its pixels to a later-drawn one."""
    for ann in scene.annotations(i):
        obj = scene.tracks[ann.track]
        covered = int(np.count_nonzero(coverage(ids.shape, obj.ellipse, obj.boxes[i]) >= 0.5))
        if covered and np.count_nonzero(ids == ann.track + 1) < 0.9 * covered:
            return True
    return False


def vos_scene(rng, size, frames, n_objects, schedules, all_in_first_frame) -> Scene:
    """A scene whose objects occlude one another in some frame (when there are several) and, if
    asked, are all visible in frame 0; drawn again from the same stream until it is (20 tries)."""
    for _ in range(20):
        scene = Scene(rng, size, frames, n_objects, decimals=2, schedules=schedules, distractors=1,
                      size_range=(0.15, 0.35))
        first = scene.label_map(0)
        if all_in_first_frame and any(np.count_nonzero(first == k + 1) < _MIN_FIRST_FRAME_PIXELS
                                      for k in range(n_objects)):
            continue
        if n_objects == 1 or any(_occluded(scene, i, scene.label_map(i)) for i in range(frames)):
            return scene
    return scene


def _video_id(rng) -> str:
    return ''.join(f'{int(d):x}' for d in rng.integers(0, 16, 10))


def write_ytbvos(out, videos, frames, seed, size, broken, bar):
    meta = {}
    small = 0
    for v in range(videos):
        rng = random_stream(seed, 'YTBVOS', v)
        video = _video_id(rng)
        n_obj = int(rng.integers(1, 4))
        categories = rng.choice(_CATEGORIES, n_obj)
        schedules = ['gap' if (v + k) % 3 == 0 else None for k in range(n_obj)]
        scene = vos_scene(rng, size, frames, n_obj, schedules, all_in_first_frame=False)
        faults = video_faults(scene, faults_for_video(v, videos, broken, IMAGE_FAULTS, MASK_FAULTS))
        objects = {str(k + 1): {'category': str(categories[k]), 'frames': []} for k in range(n_obj)}
        for f in range(frames):
            name = f'{YTBVOS_STEP * f:05d}'
            key = dict(video=video, frame=YTBVOS_STEP * f)
            fault = faults.get(f)
            ids = scene.label_map(f)
            present = [k + 1 for k in range(n_obj) if np.any(ids == k + 1)]
            if fault == 'empty_mask' and present:  # listed in meta.json, no pixel in the annotation
                ids[ids == present[-1]] = 0
                out.fault(fault, f'train/Annotations/{video}/{name}.png', object=present[-1], **key)
            image_ok = out.image(f'train/JPEGImages/{video}/{name}.jpg', scene.frame(f),
                                 fault if fault in IMAGE_FAULTS else None, **key)
            png_ok = out.png(f'train/Annotations/{video}/{name}.png', ids,
                             fault if fault in ('corrupt_png', 'missing_png') else None, **key)
            for k in present:
                objects[str(k)]['frames'].append(name)
                pixels = int(np.count_nonzero(ids == k))
                usable = image_ok and png_ok and pixels > 0
                small += int(usable and pixels <= YTBVOS_MIN_MASK_PIXELS)
                out.count(1, int(usable and pixels > YTBVOS_MIN_MASK_PIXELS))
        meta[video] = {'objects': objects}
        out.totals['videos'] += 1
        bar.update()
    atomic_write(out.root / 'train/meta.json', json.dumps({'videos': meta}, indent=1))
    return dict(small_masks=small)


def with_void(ids, width: int = 1):
    """`ids` with VOID on the pixels within `width` of a change of id (DAVIS's void border band)."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    band = cv2.dilate(ids, kernel) != cv2.erode(ids, kernel)
    out = ids.copy()
    out[band] = VOID
    return out


def davis_name(v: int) -> str:
    word = _DAVIS_WORDS[v % len(_DAVIS_WORDS)]
    return word if v < len(_DAVIS_WORDS) else f'{word}-{v // len(_DAVIS_WORDS)}'


def write_davis(out, videos, frames, seed, size, broken, bar):
    sets = {('2017', 'train'): [], ('2017', 'val'): [], ('2016', 'train'): [], ('2016', 'val'): []}
    objects = 0
    for v in range(videos):
        rng = random_stream(seed, 'DAVIS', v)
        name = davis_name(v)
        n_obj = 1 if v % 4 < 2 else int(rng.integers(2, 4))
        schedules = ['gap' if (v + k) % 2 == 1 else None for k in range(n_obj)]
        scene = vos_scene(rng, size, frames, n_obj, schedules, all_in_first_frame=True)
        faults = video_faults(scene, faults_for_video(v, videos, broken, ('truncated_jpeg',),
                                                      ('corrupt_png', 'missing_png')))
        for f in range(frames):
            fault = faults.get(f)
            key = dict(sequence=name, frame=f)
            image_ok = out.image(f'JPEGImages/480p/{name}/{f:05d}.jpg', scene.frame(f),
                                 fault if fault in IMAGE_FAULTS else None, **key)
            png_ok = out.png(f'Annotations/480p/{name}/{f:05d}.png', with_void(scene.label_map(f)),
                             fault if fault in MASK_FAULTS else None, **key)
            out.count(n_obj, n_obj * int(image_ok and png_ok))
        subset = 'val' if v % 2 == 0 else 'train'
        sets[('2017', subset)].append(name)
        if n_obj == 1:
            sets[('2016', subset)].append(name)
        objects += n_obj
        out.totals['videos'] += 1
        bar.update()
    for (year, subset), names in sets.items():
        out.text(f'ImageSets/{year}/{subset}.txt', ''.join(f'{n}\n' for n in names))
    return dict(objects=objects)
