"""Synthetic GOT-10k and LaSOT training sets in their raw layouts (docs/datasets.md): one annotated
target a sequence, over 1-2 unannotated distractors drawn behind it, with a visibility gap in every
other sequence.

GOT10K: boxes with 4 decimals; absent frames (absence 1, cover 0) repeat the last visible box, so a
reader must honour ``absence.label``; ``cover.label`` holds the visible eighths (0..8),
``cut_by_image.label`` whether the frame border clips the box; ``meta_info.ini`` and
``train/list.txt`` as in the real data.

LASOT: integer boxes. Hidden frames: the first half of a gap is out-of-view (box "0,0,0,0"), the
second half fully occluded (box at the object's would-be position, object not drawn); ``nlp.txt``
holds one sentence.
"""
from __future__ import annotations

import math

from ..fileio import atomic_write
from .faults import BOX_FAULTS, IMAGE_FAULTS, break_box, faults_for_video, video_faults
from .scene import Scene, int_box, random_stream

_LASOT_CLASSES = ('airplane', 'bear', 'bicycle', 'bird', 'car', 'cat', 'dog', 'horse')


def _single_target_scene(rng, v, size, frames, decimals):
    """One annotated target (gap in every other video) over 1-2 distractors."""
    return Scene(rng, size, frames, 1, decimals=decimals,
                 schedules=['gap' if v % 2 == 0 else None], distractors=1 + v % 2)


def write_got10k(out, videos, frames, seed, size, broken, bar):
    names = []
    for v in range(videos):
        rng = random_stream(seed, 'GOT10K', v)
        name = f'GOT-10k_Train_{v + 1:06d}'
        names.append(name)
        scene = _single_target_scene(rng, v, size, frames, decimals=4)
        faults = video_faults(scene, faults_for_video(v, videos, broken, IMAGE_FAULTS, BOX_FAULTS))
        gt, absence, cover, cut = [], [], [], []
        last = None
        for f in range(frames):
            fault = faults.get(f)
            rel = f'train/{name}/{f + 1:08d}.jpg'
            key = dict(video=name, frame=f)
            readable = out.image(rel, scene.frame(f), fault if fault in IMAGE_FAULTS else None, **key)
            anns = scene.annotations(f)
            if anns:
                ann = anns[0]
                box = [float(b) for b in ann.box]
                full = ann.full
                ratio = (box[2] - box[0]) * (box[3] - box[1]) / ((full[2] - full[0]) * (full[3] - full[1]))
                last = box
                if fault in BOX_FAULTS:
                    box = break_box(fault, box, *size)
                    out.fault(fault, f'train/{name}/groundtruth.txt', line=f + 1, **key)
                absence.append(0)
                cover.append(int(min(8, max(1, math.ceil(8 * ratio - 1e-9)))))
                cut.append(int(ann.cut))
                out.count(1, int(readable and fault not in BOX_FAULTS))
            else:
                box = last if last is not None else [0.0, 0.0, 0.0, 0.0]
                absence.append(1)
                cover.append(0)
                cut.append(0)
            gt.append('{:.4f},{:.4f},{:.4f},{:.4f}'.format(box[0], box[1], box[2] - box[0], box[3] - box[1]))
        seq = f'train/{name}'
        out.text(f'{seq}/groundtruth.txt', '\n'.join(gt) + '\n')
        out.text(f'{seq}/absence.label', '\n'.join(map(str, absence)) + '\n')
        out.text(f'{seq}/cover.label', '\n'.join(map(str, cover)) + '\n')
        out.text(f'{seq}/cut_by_image.label', '\n'.join(map(str, cut)) + '\n')
        out.text(f'{seq}/meta_info.ini',
                 '[METAINFO]\nurl: synthetic\nbegin: 00:00:00\nend: 00:00:10\nanno_fps: 10Hz\n'
                 f'object_class: {_LASOT_CLASSES[v % len(_LASOT_CLASSES)]}\nmotion_class: moving\n'
                 f'major_class: synthetic\nroot_class: object\nmotion_adverb: smoothly\n'
                 f'resolution: ({size[0]}, {size[1]})\n')
        out.totals['videos'] += 1
        bar.update()
    atomic_write(out.root / 'train/list.txt', '\n'.join(names) + '\n')


def write_lasot(out, videos, frames, seed, size, broken, bar):
    for v in range(videos):
        rng = random_stream(seed, 'LASOT', v)
        cls = _LASOT_CLASSES[(v // 2) % len(_LASOT_CLASSES)]
        seq = f'{cls}/{cls}-{(v // 2) // len(_LASOT_CLASSES) * 2 + v % 2 + 1}'
        scene = _single_target_scene(rng, v, size, frames, decimals=0)
        faults = video_faults(scene, faults_for_video(v, videos, broken, IMAGE_FAULTS, BOX_FAULTS))
        hidden = [f for f in range(frames) if not scene.annotations(f)]
        gt, occlusion, out_of_view = [], [], []
        for f in range(frames):
            fault = faults.get(f)
            key = dict(video=seq, frame=f)
            readable = out.image(f'{seq}/img/{f + 1:08d}.jpg', scene.frame(f),
                                 fault if fault in IMAGE_FAULTS else None, **key)
            anns = scene.annotations(f)
            if anns:
                box = int_box(anns[0].box)
                if fault in BOX_FAULTS:
                    box = break_box(fault, box, *size)
                    out.fault(fault, f'{seq}/groundtruth.txt', line=f + 1, **key)
                occ = oov = 0
                out.count(1, int(readable and fault not in BOX_FAULTS))
            elif hidden.index(f) < len(hidden) // 2:
                box, occ, oov = [0, 0, 0, 0], 0, 1
            else:
                box, occ, oov = int_box(scene.tracks[0].boxes[f]), 1, 0
            gt.append(f'{box[0]},{box[1]},{box[2] - box[0]},{box[3] - box[1]}')
            occlusion.append(str(occ))
            out_of_view.append(str(oov))
        out.text(f'{seq}/groundtruth.txt', '\n'.join(gt) + '\n')
        out.text(f'{seq}/full_occlusion.txt', ','.join(occlusion) + '\n')
        out.text(f'{seq}/out_of_view.txt', ','.join(out_of_view) + '\n')
        out.text(f'{seq}/nlp.txt', f'a textured {cls} moving over a textured background\n')
        out.totals['videos'] += 1
        bar.update()

