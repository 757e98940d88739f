"""Synthetic COCO 2017 in its raw layout (docs/datasets.md).

1-4 objects an image (image sizes within ±20 % of ``size``), image ids ``139 + 1009 i``, real COCO
category ids. ``bbox`` floats have 2 decimals (the object's full extent clipped to the image, the
scene's box convention). The segmentation is, as in COCO, the object's visible pixels (later-drawn
objects occlude earlier ones; `Scene.label_map`), and ``area`` its pixel count: an ``iscrowd=0``
annotation has polygons (the outlines of the visible parts, 2 decimals; two or more when an occluder
splits the object), an ``iscrowd=1`` one an uncompressed RLE (``counts`` a list, column-major, as
COCO's crowd regions); the first annotation of image 10 has a compressed RLE (``counts`` a string,
as pycocotools writes it, e.g. in LVIS and results files). Image index 2 has no annotations;
indices 8 and 9 hold one ``iscrowd=1`` annotation each.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from ..fileio import atomic_write
from .faults import BOX_FAULTS, IMAGE_FAULT_AT
from .scene import image_scene, jittered_size, random_stream

_COCO_CATEGORIES = ((1, 'person', 'person'), (2, 'bicycle', 'vehicle'),
                    (3, 'car', 'vehicle'), (5, 'airplane', 'vehicle'),
                    (16, 'bird', 'animal'), (17, 'cat', 'animal'),
                    (18, 'dog', 'animal'), (19, 'horse', 'animal'))


def _rle_counts(mask):
    """Uncompressed COCO RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order='F')
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _polygons(mask):
    """COCO polygons (flat x, y lists) of a binary mask's parts, which pycocotools rasterises back to
    exactly the mask: the outlines of the mask at twice the resolution, at (x + 0.5) / 2."""
    big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) for v in ((c.reshape(-1, 2) + 0.5) / 2).ravel()] for c in contours if len(c) >= 3]


def _compressed_rle(mask) -> dict:
    """COCO compressed RLE (``counts`` a string), as pycocotools encodes it."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode('ascii'))


def write_coco(out, videos, frames, seed, size, broken, bar):
    images, annotations = [], []
    crowd = 0
    for i in range(videos):
        rng = random_stream(seed, 'COCO', i)
        wh = jittered_size(rng, size)
        scene = image_scene(rng, wh, i == 2, decimals=2)
        image_id = 139 + 1009 * i
        fault = IMAGE_FAULT_AT.get(i) if broken else None
        fault = None if fault == 'malformed_xml' else fault
        rel = f'train2017/{image_id:012d}.jpg'
        readable = out.image(rel, scene.frame(0), fault, image_id=image_id)
        images.append(dict(license=1, file_name=f'{image_id:012d}.jpg', coco_url='',
                           height=wh[1], width=wh[0], date_captured='2017-01-01 00:00:00',
                           flickr_url='', id=image_id))
        ids = scene.label_map(0)
        anns = [a for a in scene.annotations(0) if np.any(ids == a.track + 1)]  # COCO: no pixel, no annotation
        cats = rng.choice(len(_COCO_CATEGORIES), max(len(anns), 1))
        for k, ann in enumerate(anns):
            x1, y1, x2, y2 = (round(float(v), 2) for v in ann.box)
            bbox = [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
            is_crowd = int(i in (8, 9) and k == len(anns) - 1)
            crowd += is_crowd
            visible = ids == ann.track + 1
            if is_crowd:
                segmentation = dict(counts=_rle_counts(visible), size=[wh[1], wh[0]])
            elif i == 10 and k == 0:
                segmentation = _compressed_rle(visible)
            else:
                segmentation = _polygons(visible)
            area = float(np.count_nonzero(visible))
            record = dict(segmentation=segmentation, area=area, iscrowd=is_crowd,
                          image_id=image_id, bbox=bbox,
                          category_id=_COCO_CATEGORIES[int(cats[k])][0], id=len(annotations) + 1)
            if fault in BOX_FAULTS and k == 0:
                if fault == 'box_outside_frame':
                    record['bbox'] = [float(wh[0] + 5), y1, bbox[2], bbox[3]]
                else:
                    record['bbox'] = [x1, y1, 0.0, bbox[3]]
                    record['area'] = 0.0
                out.fault(fault, 'annotations/instances_train2017.json',
                          image_id=image_id, annotation_id=record['id'])
            annotations.append(record)
        out.count(len(anns), len(anns) - int(fault in BOX_FAULTS) if readable else 0)
        out.totals['videos'] += 1
        bar.update()
    doc = dict(info=dict(description='synthetic COCO-format data (pipeline.synthetic)',
                         version='1.0', year=2017, contributor='synthetic', date_created='2017/01/01'),
               licenses=[dict(url='', id=1, name='synthetic')],
               images=images, annotations=annotations,
               categories=[dict(supercategory=s, id=c, name=n) for c, n, s in _COCO_CATEGORIES])
    atomic_write(out.root / 'annotations/instances_train2017.json', json.dumps(doc))
    return dict(crowd_annotations=crowd)

