"""SiamFC crop geometry shared by the shard builder, the data pipeline and the tracker.

PySOT pre-crops every annotated object into a square "search" crop of 511 px centred on the
object, whose side s_x in the original image is s_z * 511 / 127, where s_z is the SiamFC
context-padded template side.  The affine warp that PySOT's offline scripts use maps the
square [cx - s_x/2, cx + s_x/2] onto output pixels [0, out - 1] (scale (out - 1) / s_x, i.e.
510 / s_x), not onto [0, out] (511 / s_x).  The crop is therefore ~0.2 % smaller in scale than
the 127 / s_z that `box_on_crop` (PySOT's `_get_bbox`) assumes, and the object centre lands on
pixel 255 exactly.  We follow PySOT on both sides so that existing crop511 data and our crops
are interchangeable.

The constants are what the shard builder cuts with.  Training trusts the geometry a shard
folder records (`shard_crop_geometry`, the one check of it against a config), and the tracker
crops with the config's TRACK values; that check ties TRACK.CONTEXT_AMOUNT to the shards'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CONTEXT_AMOUNT = 0.5
EXEMPLAR_SIZE = 127
CROP_SIZE = 511


@dataclass(frozen=True)
class CropGeometry:
    """How a shard folder's crops were cut (its index metadata 'crop')."""
    crop_size: int          # side of the stored search crops (511)
    exemplar_size: int      # template side the crop scale refers to (127)
    context_amount: float   # SiamFC context of the template square (0.5)


def shard_crop_geometry(meta_crop, cfg, where: str) -> CropGeometry:
    """The crop geometry a shard folder records, checked against the config it is to train.

    `meta_crop`: the 'crop' mapping of the folder's index metadata (None if missing).  The
    crops must be the config's: exemplar_size = TRAIN.EXEMPLAR_SIZE, context_amount =
    TRACK.CONTEXT_AMOUNT (the tracker crops with it, so training crops must match) and
    crop_size >= TRAIN.SEARCH_SIZE.  ValueError naming `where` and each wrong value otherwise.
    """
    crop = dict(meta_crop or {})
    got = {key: crop.get(key) for key in ("exemplar_size", "context_amount", "crop_size")}
    wrong = []
    for key, want in (("exemplar_size", int(cfg.TRAIN.EXEMPLAR_SIZE)),
                      ("context_amount", float(cfg.TRACK.CONTEXT_AMOUNT))):
        if got[key] is None or not math.isclose(float(got[key]), want):
            wrong.append(f"{key}={got[key]!r} (config needs {want!r})")
    if got["crop_size"] is None or int(got["crop_size"]) < int(cfg.TRAIN.SEARCH_SIZE):
        wrong.append(f"crop_size={got['crop_size']!r} (config needs >= {int(cfg.TRAIN.SEARCH_SIZE)})")
    if wrong:
        raise ValueError(f"shards in {where} were built with other crop parameters: {', '.join(wrong)} "
                         f"(TRAIN.EXEMPLAR_SIZE, TRACK.CONTEXT_AMOUNT, TRAIN.SEARCH_SIZE); rebuild them with "
                         f"tools/build_lmdb.py or fix the config")
    return CropGeometry(int(got["crop_size"]), int(got["exemplar_size"]), float(got["context_amount"]))


def siamfc_crop_size(w: float, h: float, context: float = CONTEXT_AMOUNT) -> float:
    """Side s_z of the SiamFC template square for a w x h object: sqrt((w+p)(h+p)), p = context*(w+h).

    Works on scalars and on numpy arrays (the tracker scores all anchors at once)."""
    pad = context * (w + h)
    return np.sqrt((w + pad) * (h + pad))


def search_crop_side(w: float, h: float, context: float = CONTEXT_AMOUNT,
                     exemplar: int = EXEMPLAR_SIZE, crop_size: int = CROP_SIZE) -> float:
    """Side s_x (original-image pixels) of the square that becomes the crop_size search crop.

    Equals PySOT's s_z + 2 * ((crop_size - exemplar) / 2) / (exemplar / s_z) = s_z * crop_size / exemplar.
    """
    return siamfc_crop_size(w, h, context) * crop_size / exemplar


def square_to_crop_affine(cx: float, cy: float, side: float, out_size: int) -> np.ndarray:
    """2x3 affine mapping the square of `side` centred at (cx, cy) onto [0, out_size - 1]^2.

    Uses (out_size - 1) / side like PySOT's `crop_hwc` (the 510-vs-511 quirk, see module doc).
    """
    a = (out_size - 1) / side
    x0 = cx - side / 2.0
    y0 = cy - side / 2.0
    return np.array([[a, 0.0, -a * x0], [0.0, a, -a * y0]], dtype=np.float64)


def search_crop_affine(box, context: float = CONTEXT_AMOUNT, exemplar: int = EXEMPLAR_SIZE,
                       crop_size: int = CROP_SIZE) -> np.ndarray:
    """Affine (2x3) from the original image to the crop_size crop of box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = search_crop_side(x2 - x1, y2 - y1, context, exemplar, crop_size)
    return square_to_crop_affine((x1 + x2) / 2.0, (y1 + y2) / 2.0, side, crop_size)


def mean_colour(image: np.ndarray) -> tuple:
    """Per-channel mean of an HxWxC image as floats (PySOT's `avg_chans`, the padding colour)."""
    return tuple(cv2.mean(image)[: image.shape[2] if image.ndim == 3 else 1])


def crop_search(image: np.ndarray, box, padding=None, context: float = CONTEXT_AMOUNT,
                exemplar: int = EXEMPLAR_SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
    """The crop_size x crop_size SiamFC search crop of `box`, padded with `padding` (default mean colour).

    Same geometry and interpolation as PySOT's `crop_like_SiamFC` "x" output (bilinear warpAffine,
    BORDER_CONSTANT with the frame's mean colour).
    """
    if padding is None:
        padding = mean_colour(image)
    m = search_crop_affine(box, context, exemplar, crop_size)
    # OpenCV already skips pure-border output pixels cheaply; warping an inner ROI was measured slower.
    return cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in padding))


def box_on_crop(box, crop_size: int = CROP_SIZE, exemplar: int = EXEMPLAR_SIZE,
                context: float = CONTEXT_AMOUNT) -> tuple:
    """Ground-truth box (x1, y1, x2, y2) on the crop for an original-image box = PySOT's `_get_bbox`.

    Only w and h are used: the object is centred at (crop_size // 2, crop_size // 2) with size
    (w, h) * exemplar / s_z.
    """
    return tuple(boxes_on_crop(np.asarray(box, np.float64).reshape(1, 4), crop_size, exemplar, context)[0])


def boxes_on_crop(boxes, crop_size: int = CROP_SIZE, exemplar: int = EXEMPLAR_SIZE,
                  context: float = CONTEXT_AMOUNT) -> np.ndarray:
    """`box_on_crop` of N boxes (N, 4) at once: (N, 4) float64, the same numbers."""
    boxes = np.asarray(boxes).astype(np.float64, copy=False).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    scale = exemplar / siamfc_crop_size(w, h, context)
    w, h = w * scale, h * scale
    c = crop_size // 2
    return np.stack([c - w / 2.0, c - h / 2.0, c + w / 2.0, c + h / 2.0], axis=1)
