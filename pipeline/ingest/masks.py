"""Masks of the crop worker: decoding each dataset's annotation into a full-frame mask, and the mask's
511 crop (the image crop's geometry) thresholded as the SiamMask authors' scripts do.

* COCO: the annotation's segmentation (polygons, RLE or crowd RLE) decoded by the official COCO API
  exactly as ``pycocotools.coco.COCO.annToMask`` does (``frPyObjects`` with the image record's height
  and width, ``merge`` of polygons, ``decode``).
* YouTube-VOS: palette PNGs read by their palette indices (PIL; OpenCV would turn them into colours),
  the object's mask = the pixels whose value is its id.
* crop511 import: the authors' ``.m.png`` (511 x 511, read as ``> 0``, as their training code reads it).

The warp is the image crop's (`pipeline.crop.crop_search`: bilinear, border 0) on the float mask; the
result ``> threshold`` (COCO 0.5, YouTube-VOS 0.2) is the stored mask, encoded by
`pipeline.shards.encode_mask`.
"""
from __future__ import annotations

import json
import zlib

import cv2
import numpy as np

from ..crop import crop_search
from ..shards import encode_mask

# Errors an unreadable palette PNG raises in PIL (truncated data, garbage, a file that is no image).
_PNG_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


def coco_mask(source: str, image_shape) -> tuple:
    """(uint8 H x W mask of 0/1, None) of a COCO mask source (JSON [annotation id, image height, image
    width, segmentation]), or (None, reason): a segmentation pycocotools cannot decode, or one whose
    size differs from the decoded image's.  A record without height/width uses the image's."""
    from pycocotools import mask as mask_utils  # imported in the crop worker only

    ann_id, h, w, segm = json.loads(source)
    h = image_shape[0] if h is None else h
    w = image_shape[1] if w is None else w
    try:
        if isinstance(segm, list):             # polygons: one RLE per polygon, merged
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm['counts'], list):  # uncompressed RLE (crowd)
            rle = mask_utils.frPyObjects(segm, h, w)
        else:                                   # compressed RLE
            rle = segm
        mask = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises TypeError, ValueError, IndexError, ... for bad input
        return None, f'annotation id {ann_id}: segmentation cannot be decoded ({type(e).__name__}: {e})'
    if mask.shape != tuple(image_shape[:2]):
        return None, (f'annotation id {ann_id}: segmentation of {mask.shape[1]}x{mask.shape[0]} for a '
                      f'{image_shape[1]}x{image_shape[0]} image')
    return mask, None


def read_palette_png(path: str) -> tuple:
    """(uint8 H x W object ids, None) of a palette (or grayscale) annotation PNG, or (None, reason)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ('P', 'L'):
                return None, f'a {img.mode} image, not a palette PNG of object ids'
            return np.array(img), None
    except FileNotFoundError as e:
        return None, e.strerror or str(e)
    except _PNG_ERRORS as e:
        return None, f'cannot decode ({type(e).__name__}: {e})'


def read_crop511_mask(path: str) -> tuple:
    """(the .m.png as a bool array, None), (None, None) if the file is absent, or (None, reason)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, e.strerror or str(e)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if mask is None:
        return None, 'cannot decode'
    return mask > 0, None


def encoded(mask) -> tuple:
    """(PNG, (x, y, w, h), crc32) of a crop-sized binary mask."""
    png, region = encode_mask(mask)
    return png, region, zlib.crc32(png)


def mask_box(mask) -> tuple | None:
    """Bounding box (x1, y1, x2, y2) of the nonzero pixels, pixel-edge convention (the authors' box of
    a YouTube-VOS mask: contour extremes + 1); None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def crop_mask(mask, box, threshold: float, params) -> tuple:
    """(PNG, (x, y, w, h), crc32) of a full-frame mask's 511 crop around `box`, thresholded."""
    warped = crop_search(mask.astype(np.float32), box, (0.0,), params.context_amount, params.exemplar_size,
                         params.crop_size)
    return encoded(warped > threshold)
