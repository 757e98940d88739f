"""Fault injection of the synthetic training datasets: deliberately broken files, listed in
``broken.json``.

``broken.json`` next to the data lists each fault as ``{kind, path, ...}`` (``path`` relative to the
root; plus ``video``/``track``/``frame``, ``image_id``/``annotation_id``, or 1-based ``line`` where
they apply), the ``counts`` per kind and ``totals`` (``videos``, ``image_files`` written,
``annotations``: box records a reader can parse, i.e. not in a malformed XML/CSV row and not absent;
``valid_annotations``: those of them on a readable image with a valid box).

Kinds: ``truncated_jpeg`` (first half of a JPEG), ``corrupt_jpeg`` (SOI marker then garbage),
``empty_jpeg`` (0 bytes), ``missing_image`` (annotated, file absent), ``malformed_xml`` (VID/DET:
the XML cut in half), ``malformed_csv_row`` (YTB: an extra short row with a non-numeric timestamp),
``box_outside_frame`` (box entirely right of the image), ``degenerate_box`` (w = 0); for the
palette-PNG annotations of YTBVOS and DAVIS (``MASK_FAULTS``): ``corrupt_png`` (PNG signature then
garbage), ``missing_png`` (listed frame, annotation file absent), ``empty_mask`` (YTBVOS: meta.json
lists the object in a frame where its annotation has no pixel). Faults sit on annotated frames of
video 0 (image faults) and video 1 (annotation faults), or images 1-8 (``IMAGE_FAULT_AT``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .scene import encode_jpeg, encode_palette_png, random_stream

IMAGE_FAULTS = ('truncated_jpeg', 'corrupt_jpeg', 'empty_jpeg', 'missing_image')
BOX_FAULTS = ('box_outside_frame', 'degenerate_box')
MASK_FAULTS = ('corrupt_png', 'missing_png', 'empty_mask')
# the fault of each image index of COCO and DET (COCO, without XML files, skips malformed_xml)
IMAGE_FAULT_AT = {1: 'truncated_jpeg', 3: 'corrupt_jpeg', 4: 'empty_jpeg', 5: 'missing_image',
                   6: 'box_outside_frame', 7: 'degenerate_box', 8: 'malformed_xml'}


class DatasetFiles:
    """The files of one synthetic dataset under `root`: writes them (an image broken as its fault kind
    asks), records the faults and the totals; `finish` writes broken.json."""

    def __init__(self, root: Path, dataset: str, seed: int, broken: bool):
        self.root, self.dataset, self.seed, self.broken = root, dataset, seed, broken
        self.items = []
        self.totals = dict(videos=0, image_files=0, annotations=0, valid_annotations=0)
        self._garbage = random_stream(seed, dataset, 'garbage')

    def fault(self, kind, path, **key):
        self.items.append(dict(kind=kind, path=str(path), **key))

    def image(self, rel, img, fault=None, **key):
        """Write a JPEG, broken as asked by an image fault kind; True if it is readable."""
        data = encode_jpeg(img)
        if fault == 'truncated_jpeg':
            data = data[:len(data) // 2]
        elif fault == 'corrupt_jpeg':
            data = data[:2] + self._garbage.integers(0, 256, len(data) // 4, np.uint8).tobytes()
        elif fault == 'empty_jpeg':
            data = b''
        return self._store(rel, data, fault, IMAGE_FAULTS, 'missing_image', 'image_files', key)

    def png(self, rel, ids, fault=None, **key):
        """Write an object-id map as a palette PNG, broken as asked by a PNG fault kind; True if it is
        readable."""
        data = encode_palette_png(ids)
        if fault == 'corrupt_png':
            data = data[:8] + self._garbage.integers(0, 256, len(data) // 4, np.uint8).tobytes()
        return self._store(rel, data, fault, ('corrupt_png', 'missing_png'), 'missing_png', 'annotation_files', key)

    def _store(self, rel, data, fault, kinds, missing, total, key):
        """Record `fault` if it is one of `kinds`, write the file unless it is the `missing` kind and
        count it in totals[total]; True if the written file is readable."""
        if fault in kinds:
            self.fault(fault, rel, **key)
        if fault == missing:
            return False
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.totals[total] = self.totals.get(total, 0) + 1
        return fault not in kinds

    def text(self, rel, text):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def count(self, n, valid):
        self.totals['annotations'] += n
        self.totals['valid_annotations'] += valid

    def finish(self, extra_totals=None):
        counts = {}
        for item in self.items:
            counts[item['kind']] = counts.get(item['kind'], 0) + 1
        manifest = dict(dataset=self.dataset, seed=self.seed, generator='pipeline.synthetic',
                        format_version=1, counts=counts,
                        totals={**self.totals, **(extra_totals or {})}, items=self.items)
        atomic_write(self.root / 'broken.json', json.dumps(manifest, indent=1) + '\n')
        return manifest


def video_faults(scene, kinds):
    """Map frame -> fault kind, spread over annotated frames (never frame 0)."""
    frames = [i for i in range(1, len(scene)) if scene.annotations(i)]
    n = min(len(kinds), len(frames))
    return {frames[(k * len(frames)) // n]: kinds[k] for k in range(n)}


def faults_for_video(v, n_videos, broken, image_kinds, record_kinds):
    """The fault kinds of video v: the image faults in video 0, the annotation (record) faults in
    video 1, both in video 0 when there is only one; none when not `broken`."""
    if not broken:
        return []
    if n_videos == 1:
        return list(image_kinds) + list(record_kinds) if v == 0 else []
    return {0: list(image_kinds), 1: list(record_kinds)}.get(v, [])


def break_box(kind, box, w, h):
    """Apply a box fault to an (x1, y1, x2, y2) box."""
    box = list(box)
    if kind == 'box_outside_frame':
        bw = box[2] - box[0]
        box[0] = w + 5
        box[2] = box[0] + bw
    elif kind == 'degenerate_box':
        box[2] = box[0]
    return box

