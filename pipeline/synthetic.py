"""Small synthetic tracking datasets written in each dataset's OFFICIAL raw layout.

They are the embedded demo data and the test data of the LMDB builder
(`tools/build_lmdb.py`), which parses exactly these layouts. Every scene is
textured objects (noise / stripes / checker / ring patterns; rectangles or
ellipses) in saturated colours that move smoothly, scale and change aspect
over a low-saturation textured background (one per video, slowly panning).
Everything is deterministic for a seed: video ``i`` of dataset ``D`` uses
``numpy.random.default_rng([seed, crc32(D), i])``, so ``--videos`` only adds
videos and never changes the pictures or boxes of earlier ones.

Box convention (all datasets): 0-based pixel-edge coordinates. A box covers
``x1 <= x < x2``; ``w = x2 - x1``. Integer formats (VID, DET, LaSOT, eval)
have integer edges, so ``xmax - xmin`` is exactly the object width, as PySOT
computes it. Boxes are the full object extent clipped to the frame; an
occluded object keeps its full box. Objects never render as slivers: an
object with < 2 px or < 10 % of its area inside the frame is neither drawn
nor annotated.

Layouts (paths relative to the dataset root given as ``out_dir``)
------------------------------------------------------------------
VID (ILSVRC2015)::

    Data/VID/train/ILSVRC2015_VID_train_000{0,1}/ILSVRC2015_train_{v:08d}/{f:06d}.JPEG
    Annotations/VID/train/ILSVRC2015_VID_train_000{0,1}/ILSVRC2015_train_{v:08d}/{f:06d}.xml

  The first half of the videos is in subset ``_0000``, the rest in ``_0001``
  (the real data has ``_0000`` .. ``_0003``). XML: ``annotation/{folder
  ("<subset>/<video>"), filename ("000123", no extension), source/database,
  size/{width,height}, object*}``; each object has ``trackid`` (int),
  ``name`` (VID synset, e.g. n02691156), ``bndbox/{xmax,xmin,ymax,ymin}``
  (ints, in that order as in the real files), ``occluded`` (0/1),
  ``generated`` (0). 2-3 tracks per video; some tracks leave and re-enter
  (frames without the object: several consecutive runs) and one track of
  video 1 has an isolated single visible frame (a run of length 1).

COCO 2017::

    train2017/{image_id:012d}.jpg
    annotations/instances_train2017.json

  JSON keys ``info, licenses, images, annotations, categories``. images:
  ``{id, file_name, width, height, license, coco_url, flickr_url,
  date_captured}`` (sizes vary per image). annotations: ``{id, image_id,
  category_id (real COCO ids), bbox [x, y, w, h] floats (2 decimals), area,
  iscrowd, segmentation}``; iscrowd=0 has a polygon, iscrowd=1 an
  uncompressed RLE ``{counts, size: [h, w]}`` of the box. Image index 2 has
  no annotations; indices 8, 9 hold one iscrowd=1 annotation each.

DET (ILSVRC2015 DET)::

    Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_{i:08d}.JPEG
    Annotations/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_{i:08d}.xml
    Data/DET/train/ILSVRC2013_train/{synset}/{synset}_{k}.JPEG        (3 images)
    Annotations/DET/train/ILSVRC2013_train/{synset}/{synset}_{k}.xml

  XML as VID but objects have only ``name`` and ``bndbox/{xmin,ymin,xmax,
  ymax}`` (no trackid); ``folder`` is the subset (or the synset for
  ILSVRC2013_train). Image index 2 has no objects.

YTB (YouTube-BoundingBoxes)::

    yt_bb_detection_train.csv
    yt_bb_detection_train/{class_id}/{youtube_id}_{timestamp_ms}_{class_id}_{object_id}.jpg

  CSV without header, columns ``youtube_id, timestamp_ms, class_id,
  class_name, object_id, object_presence ('present'|'absent'), xmin, xmax,
  ymin, ymax`` (normalised to 0-1, 6 decimals; absent rows have -1.0).
  Rows are grouped by video, then object, then time (1 s apart). Frames
  follow the youtube-bb-utility layout: one JPEG per CSV row (absent rows
  too), so two objects at one timestamp give two identical images. Frames
  are 16:9 (384x216 unless ``size`` is given). One class per video, 1-2
  objects per video.

GOT10K::

    train/list.txt                                  sequence names, one a line
    train/GOT-10k_Train_{v+1:06d}/{f+1:08d}.jpg
    train/GOT-10k_Train_{v+1:06d}/groundtruth.txt   "x,y,w,h" floats (4 decimals)
    train/GOT-10k_Train_{v+1:06d}/absence.label     0/1 a line
    train/GOT-10k_Train_{v+1:06d}/cover.label       0..8 a line (visible eighths)
    train/GOT-10k_Train_{v+1:06d}/cut_by_image.label 0/1 a line
    train/GOT-10k_Train_{v+1:06d}/meta_info.ini

  One annotated target, plus 1-2 unannotated distractors drawn behind it.
  Absent frames (absence=1, cover=0) repeat the last visible box, so a
  reader must honour absence.label.

LASOT::

    {class}/{class}-{n}/img/{f+1:08d}.jpg
    {class}/{class}-{n}/groundtruth.txt       "x,y,w,h" ints a line
    {class}/{class}-{n}/full_occlusion.txt    one line "0,0,1,..."
    {class}/{class}-{n}/out_of_view.txt       one line "0,0,1,..."
    {class}/{class}-{n}/nlp.txt

  One target plus distractors as GOT10K. Hidden frames: the first half of a
  gap is out-of-view (box "0,0,0,0"), the second half fully occluded (box at
  the object's would-be position, object not drawn).

Eval (OTB layout, ``make_eval``)::

    {seq}/img/{f+1:04d}.jpg
    {seq}/groundtruth_rect.txt     "x,y,w,h" ints a line, same box convention
    SYNTH.json                     PySOT toolkit index: {seq: {video_dir,
                                   init_rect, img_names, gt_rect, attr}}

  Sequences ``Synth01``..; one slow, smooth target always fully inside the
  frame, one distractor drawn behind it; same object family as the training
  data but different random streams (new instances).

Deliberate faults (training datasets, ``broken=True``)
------------------------------------------------------
``broken.json`` next to the data lists each fault as ``{kind, path, ...}``
(``path`` relative to the root; plus ``video``/``track``/``frame``,
``image_id``/``annotation_id``, or 1-based ``line`` where they apply), the
``counts`` per kind and ``totals`` (``videos``, ``image_files`` written,
``annotations``: box records a reader can parse, i.e. not in a malformed
XML/CSV row and not absent; ``valid_annotations``: those of them on a
readable image with a valid box). Kinds: ``truncated_jpeg`` (first
half of a JPEG), ``corrupt_jpeg`` (SOI marker then garbage), ``empty_jpeg``
(0 bytes), ``missing_image`` (annotated, file absent), ``malformed_xml``
(VID/DET: the XML cut in half), ``malformed_csv_row`` (YTB: an extra short
row with a non-numeric timestamp), ``box_outside_frame`` (box entirely right
of the image), ``degenerate_box`` (w = 0). Faults sit on annotated frames of
video 0 (image faults) and video 1 (annotation faults), or images 1-8.
"""
from __future__ import annotations

import json
import math
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from tqdm import tqdm

from .fileio import atomic_write

DATASETS = ('VID', 'COCO', 'DET', 'YTB', 'GOT10K', 'LASOT')
_ALIASES = {'YOUTUBEBB': 'YTB', 'YT_BB': 'YTB', 'GOT-10K': 'GOT10K'}
# (videos or images, frames per video, frame size WxH)
DEFAULTS = {
    'VID': (4, 24, (320, 240)),
    'COCO': (16, 1, (320, 240)),
    'DET': (16, 1, (320, 240)),
    'YTB': (4, 16, (384, 216)),
    'GOT10K': (4, 24, (320, 240)),
    'LASOT': (4, 24, (320, 240)),
    'EVAL': (4, 60, (320, 240)),
}
IMAGE_FAULTS = ('truncated_jpeg', 'corrupt_jpeg', 'empty_jpeg', 'missing_image')
BOX_FAULTS = ('box_outside_frame', 'degenerate_box')
MARKERS = ('broken.json', 'SYNTH.json')  # files that identify our own output

_JPEG_QUALITY = 92
_SUPERSAMPLE = 4
_TEX = 64

_VID_SYNSETS = ('n02691156', 'n02419796', 'n02131653', 'n02834778', 'n01503061',
                'n02924116', 'n02958343', 'n02084071', 'n02121808', 'n02503517',
                'n02374451', 'n03790512', 'n02324045', 'n04468005', 'n04530566',
                'n02391049')
_DET_SYNSETS = ('n01503061', 'n02958343', 'n02084071', 'n02691156', 'n03790512',
                'n02834778', 'n02374451', 'n04530566')
_COCO_CATEGORIES = ((1, 'person', 'person'), (2, 'bicycle', 'vehicle'),
                    (3, 'car', 'vehicle'), (5, 'airplane', 'vehicle'),
                    (16, 'bird', 'animal'), (17, 'cat', 'animal'),
                    (18, 'dog', 'animal'), (19, 'horse', 'animal'))
_YTB_CLASSES = ((0, 'person'), (1, 'bird'), (2, 'bicycle'), (3, 'boat'),
                (10, 'horse'), (13, 'airplane'), (19, 'dog'), (23, 'car'))
_LASOT_CLASSES = ('airplane', 'bear', 'bicycle', 'bird', 'car', 'cat', 'dog', 'horse')


# ----------------------------------------------------------------------------
# random streams and textures
# ----------------------------------------------------------------------------
def _rng(seed: int, *keys) -> np.random.Generator:
    """Independent stream for (seed, keys...); string keys hashed with crc32."""
    ints = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k)
                          for k in keys]
    return np.random.default_rng(ints)


def _smooth_noise(rng, h, w, cells):
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    cx = max(2, int(cells))
    cy = max(2, int(round(cells * h / w)))
    grid = rng.random((cy + 1, cx + 1)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _pattern(rng, h, w):
    """One of four patterns (stripes, checker, blobs, rings) in [0, 1]."""
    kind = int(rng.integers(4))
    scale = float(max(h, w))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / scale
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(0.12, 0.35)
    if kind == 0:
        p = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period
                               + rng.uniform(0, 2 * np.pi))
    elif kind == 1:
        u = x * np.cos(theta) - y * np.sin(theta)
        v = x * np.sin(theta) + y * np.cos(theta)
        p = (np.floor(u / period) + np.floor(v / period)) % 2
        p = cv2.GaussianBlur(p.astype(np.float32), (0, 0), 0.02 * scale)
    elif kind == 2:
        p = _smooth_noise(rng, h, w, rng.integers(3, 7))
    else:
        cx, cy = rng.uniform(0.3, 0.7, 2)
        p = 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / period)
    p = 0.85 * p + 0.15 * rng.random((h, w))
    return p.astype(np.float32)


def _object_texture(rng):
    """A saturated-colour textured patch (float32 BGR, _TEX x _TEX)."""
    p = _pattern(rng, _TEX, _TEX)
    q = _smooth_noise(rng, _TEX, _TEX, 4)
    hue0 = rng.uniform(0, 180)
    dhue = rng.uniform(8, 30) * rng.choice([-1, 1])
    v_lo, v_hi = rng.uniform(90, 150), rng.uniform(200, 255)
    hsv = np.empty((_TEX, _TEX, 3), np.float32)
    hsv[..., 0] = np.mod(hue0 + dhue * p, 180)
    hsv[..., 1] = rng.uniform(170, 255) * (0.85 + 0.15 * q)
    hsv[..., 2] = v_lo + (v_hi - v_lo) * p
    bgr = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    return bgr.astype(np.float32)


def _background(rng, h, w):
    """A low-saturation textured background (uint8 BGR)."""
    coarse = _smooth_noise(rng, h, w, rng.integers(3, 6))
    fine = _smooth_noise(rng, h, w, rng.integers(12, 30))
    pat = _pattern(rng, h, w)
    hsv = np.empty((h, w, 3), np.float32)
    hsv[..., 0] = rng.uniform(0, 180)
    hsv[..., 1] = rng.uniform(0, 30) * (0.5 + 0.5 * _smooth_noise(rng, h, w, 4))
    val = 40 + 180 * (0.55 * coarse + 0.3 * fine + 0.15 * pat)
    hsv[..., 2] = val + rng.normal(0, 4, (h, w))
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


# ----------------------------------------------------------------------------
# motion and rendering
# ----------------------------------------------------------------------------
def _trajectory(rng, n, w, h, *, speed, size_range, scale_var, aspect_var, amp):
    """(n, 4) float x1,y1,x2,y2: smooth sinusoidal motion, scale and aspect."""
    t = np.arange(n, dtype=np.float64)

    def wave(amplitude, lo=0.008, hi=0.03):
        f = rng.uniform(lo, hi) * speed
        return amplitude * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))

    centre = []
    for extent in (w, h):
        a1 = rng.uniform(*amp)
        a2 = rng.uniform(0, max(0.0, 0.36 - a1)) * 0.4
        centre.append(extent * (0.5 + wave(a1) + wave(a2, 0.03, 0.06)))
    cx, cy = centre
    side = rng.uniform(*size_range) * math.sqrt(w * h) * np.exp(wave(scale_var))
    ratio = np.exp(rng.uniform(-0.7, 0.7) + wave(aspect_var))
    bw = np.minimum(side * np.sqrt(ratio), 0.9 * w)
    bh = np.minimum(side / np.sqrt(ratio), 0.9 * h)
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def _quantise(boxes, decimals):
    """Round boxes to the precision the annotation format stores (0 = ints)."""
    q = np.round(boxes, decimals)
    step = 1.0 if decimals == 0 else 10.0 ** -decimals
    q[:, 2] = np.maximum(q[:, 2], q[:, 0] + 2 * step)
    q[:, 3] = np.maximum(q[:, 3], q[:, 1] + 2 * step)
    return q


def _paint(frame, texture, ellipse, box):
    """Alpha-blend a textured rectangle/ellipse with exact (sub-pixel) extent `box`.

    Coverage is computed on a _SUPERSAMPLE-times finer grid and area-averaged,
    so fractional box edges give partial-coverage pixels. Returns the covered
    area in pixels.
    """
    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    ix1, iy1 = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
    ix2, iy2 = min(int(math.ceil(x2)), fw), min(int(math.ceil(y2)), fh)
    if ix2 <= ix1 or iy2 <= iy1:
        return 0.0
    ss = _SUPERSAMPLE
    xs = ix1 + (np.arange((ix2 - ix1) * ss, dtype=np.float32) + 0.5) / ss
    ys = iy1 + (np.arange((iy2 - iy1) * ss, dtype=np.float32) + 0.5) / ss
    u = (xs - x1) / (x2 - x1)
    v = (ys - y1) / (y2 - y1)
    if ellipse:
        alpha = ((2 * v[:, None] - 1) ** 2 + (2 * u[None, :] - 1) ** 2 <= 1.0)
    else:
        alpha = ((v[:, None] >= 0) & (v[:, None] < 1)) & ((u[None, :] >= 0) & (u[None, :] < 1))
    alpha = alpha.astype(np.float32)
    th, tw = texture.shape[:2]
    map_x = np.broadcast_to(u[None, :] * tw - 0.5, alpha.shape).astype(np.float32)
    map_y = np.broadcast_to(v[:, None] * th - 0.5, alpha.shape).astype(np.float32)
    colour = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT) * alpha[..., None]
    size = (ix2 - ix1, iy2 - iy1)
    a = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    c = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
    region = frame[iy1:iy2, ix1:ix2]
    region *= (1.0 - a)[..., None]
    region += c
    return float(a.sum())


@dataclass
class _Object:
    texture: np.ndarray
    ellipse: bool
    boxes: np.ndarray      # (n, 4) full extent, unclipped
    shown: np.ndarray      # (n,) bool: not hidden by the gap schedule


@dataclass
class _Annotation:
    track: int
    box: np.ndarray        # clipped to the frame
    full: np.ndarray       # unclipped extent
    cut: bool              # clipped by the frame border
    occluded: bool         # a later-drawn object covers > 25 % of it


def _schedule(kind, n):
    """Visibility mask: 'gap' hides a middle stretch, 'isolated' leaves one lone frame."""
    shown = np.ones(n, bool)
    if kind == 'gap' and n >= 6:
        start, length = n // 3, max(2, n // 6)
        shown[start:start + length] = False
    elif kind == 'isolated' and n >= 8:
        a = n // 2 - 2
        shown[a:a + 2] = False          # a, a+1 hidden; a+2 alone; a+3, a+4 hidden
        shown[a + 3:a + 5] = False
    return shown


class _Scene:
    """A video: panning background, annotated tracks and unannotated distractors."""

    def __init__(self, rng, size, n_frames, n_tracks, *, decimals, schedules=(),
                 distractors=0, speed=1.0, pan=True, easy=False, size_range=(0.12, 0.3)):
        w, h = size
        self.size = (w, h)
        pad = int(round(0.1 * max(w, h))) if pan else 0
        self.background = _background(rng, h + 2 * pad, w + 2 * pad)
        t = np.arange(n_frames)
        if pan:
            offs = [pad + np.round(0.9 * pad * np.sin(2 * np.pi * rng.uniform(0.005, 0.02) * t
                                                      + rng.uniform(0, 2 * np.pi)))
                    for _ in range(2)]
            self.offsets = np.stack(offs, axis=1).astype(int)
        else:
            self.offsets = np.zeros((n_frames, 2), int)
        motion = dict(speed=speed * (0.5 if easy else 1.0), size_range=size_range,
                      scale_var=0.12 if easy else 0.25, aspect_var=0.1 if easy else 0.3,
                      amp=(0.05, 0.15) if easy else (0.1, 0.28))
        self.tracks, self.distractors = [], []
        for k in range(n_tracks):
            boxes = _trajectory(rng, n_frames, w, h, **motion)
            if easy:   # the eval target stays fully inside the frame
                bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
                x1 = np.clip(boxes[:, 0], 2, w - 2 - bw)
                y1 = np.clip(boxes[:, 1], 2, h - 2 - bh)
                boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
            kind = schedules[k] if k < len(schedules) else None
            self.tracks.append(_Object(_object_texture(rng), bool(rng.integers(2)),
                                       _quantise(boxes, decimals), _schedule(kind, n_frames)))
        for _ in range(distractors):
            boxes = self._distractor_path(rng, n_frames, motion)
            self.distractors.append(_Object(_object_texture(rng), bool(rng.integers(2)),
                                            _quantise(boxes, decimals), np.ones(n_frames, bool)))
        self._annotations = [self._annotate(i) for i in range(n_frames)]

    def _distractor_path(self, rng, n_frames, motion, tries=20):
        """A trajectory that touches the annotated tracks (+8 px) in as few frames as possible.

        Distractors are unannotated, so keeping them mostly apart from the targets
        keeps every target's outline visible (and the GT checkable).
        """
        best, best_hits = None, n_frames + 1
        for _ in range(tries):
            boxes = _trajectory(rng, n_frames, *self.size, **motion)
            hits = np.zeros(n_frames, bool)
            for t in self.tracks:
                hits |= ((boxes[:, 0] < t.boxes[:, 2] + 8) & (boxes[:, 2] > t.boxes[:, 0] - 8)
                         & (boxes[:, 1] < t.boxes[:, 3] + 8) & (boxes[:, 3] > t.boxes[:, 1] - 8))
            if hits.sum() < best_hits:
                best, best_hits = boxes, int(hits.sum())
            if best_hits <= 0.1 * n_frames:
                break
        return best

    @staticmethod
    def _clip(box, w, h):
        return np.array([min(max(box[0], 0), w), min(max(box[1], 0), h),
                         min(max(box[2], 0), w), min(max(box[3], 0), h)])

    def _visible(self, obj, i):
        if not obj.shown[i]:
            return None
        w, h = self.size
        full = obj.boxes[i]
        box = self._clip(full, w, h)
        bw, bh = box[2] - box[0], box[3] - box[1]
        area = (full[2] - full[0]) * (full[3] - full[1])
        if bw < 2 or bh < 2 or bw * bh < 0.1 * area:
            return None
        return box

    def _annotate(self, i):
        anns = []
        for j, obj in enumerate(self.tracks):
            box = self._visible(obj, i)
            if box is not None:
                anns.append(_Annotation(j, box, obj.boxes[i].copy(),
                                        bool(np.any(box != obj.boxes[i])), False))
        for a in anns:   # tracks are drawn in order, so later ones occlude earlier ones
            area = (a.box[2] - a.box[0]) * (a.box[3] - a.box[1])
            for b in anns:
                if b.track > a.track:
                    iw = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
                    ih = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                    if iw > 0 and ih > 0 and iw * ih > 0.25 * area:
                        a.occluded = True
        return anns

    def __len__(self):
        return len(self._annotations)

    def annotations(self, i):
        """Visible annotated tracks at frame i (list of _Annotation)."""
        return self._annotations[i]

    def frame(self, i):
        """The rendered frame i (uint8 BGR)."""
        w, h = self.size
        ox, oy = self.offsets[i]
        img = self.background[oy:oy + h, ox:ox + w].astype(np.float32)
        for obj in self.distractors:
            if self._visible(obj, i) is not None:
                _paint(img, obj.texture, obj.ellipse, obj.boxes[i])
        for ann in self._annotations[i]:
            obj = self.tracks[ann.track]
            _paint(img, obj.texture, obj.ellipse, obj.boxes[i])
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# output helpers
# ----------------------------------------------------------------------------
class _Writer:
    """Writes files under one dataset root and records faults and totals."""

    def __init__(self, root: Path, dataset: str, seed: int, broken: bool):
        self.root, self.dataset, self.seed, self.broken = root, dataset, seed, broken
        self.items = []
        self.totals = dict(videos=0, image_files=0, annotations=0, valid_annotations=0)
        self._garbage = _rng(seed, dataset, 'garbage')

    def fault(self, kind, path, **key):
        self.items.append(dict(kind=kind, path=str(path), **key))

    def image(self, rel, img, fault=None, **key):
        """Write a JPEG, broken as asked by an image fault kind; True if it is readable."""
        data = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])[1].tobytes()
        if fault == 'truncated_jpeg':
            data = data[:len(data) // 2]
        elif fault == 'corrupt_jpeg':
            data = data[:2] + self._garbage.integers(0, 256, len(data) // 4, np.uint8).tobytes()
        elif fault == 'empty_jpeg':
            data = b''
        if fault in IMAGE_FAULTS:
            self.fault(fault, rel, **key)
        if fault == 'missing_image':
            return False
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.totals['image_files'] += 1
        return fault not in IMAGE_FAULTS

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


def _video_faults(scene, kinds):
    """Map frame -> fault kind, spread over annotated frames (never frame 0)."""
    frames = [i for i in range(1, len(scene)) if scene.annotations(i)]
    n = min(len(kinds), len(frames))
    return {frames[(k * len(frames)) // n]: kinds[k] for k in range(n)}


def _faults_for_video(v, n_videos, broken, image_kinds, record_kinds):
    if not broken:
        return []
    if n_videos == 1:
        return list(image_kinds) + list(record_kinds) if v == 0 else []
    return {0: list(image_kinds), 1: list(record_kinds)}.get(v, [])


def _break_box(kind, box, w, h):
    """Apply a box fault to an (x1, y1, x2, y2) box."""
    box = list(box)
    if kind == 'box_outside_frame':
        bw = box[2] - box[0]
        box[0] = w + 5
        box[2] = box[0] + bw
    elif kind == 'degenerate_box':
        box[2] = box[0]
    return box


def _voc_xml(folder, filename, size, database, objects):
    """ImageNet (VID/DET) annotation XML; objects are lists of (tag, value|list)."""
    def emit(tag, value, depth):
        pad = '\t' * depth
        if isinstance(value, list):
            inner = ''.join(emit(t, v, depth + 1) for t, v in value)
            return f'{pad}<{tag}>\n{inner}{pad}</{tag}>\n'
        return f'{pad}<{tag}>{escape(str(value))}</{tag}>\n'

    body = [('folder', folder), ('filename', filename),
            ('source', [('database', database)]),
            ('size', [('width', size[0]), ('height', size[1])])]
    body += [('object', obj) for obj in objects]
    return '<annotation>\n' + ''.join(emit(t, v, 1) for t, v in body) + '</annotation>\n'


def _int_box(box):
    return [int(round(float(v))) for v in box]


# ----------------------------------------------------------------------------
# dataset writers
# ----------------------------------------------------------------------------
def _track_schedules(v, n_tracks):
    kinds = ['gap' if (v + j) % 3 == 0 else None for j in range(n_tracks)]
    if v == 1:
        kinds[-1] = 'isolated'
    return kinds


def _write_vid(out, videos, frames, seed, size, broken, bar):
    n_sub = 2 if videos >= 2 else 1
    for v in range(videos):
        rng = _rng(seed, 'VID', v)
        subset = f'ILSVRC2015_VID_train_{(v * n_sub) // videos:04d}'
        name = f'ILSVRC2015_train_{v:08d}'
        n_tracks = int(rng.integers(2, 4))
        synsets = rng.choice(_VID_SYNSETS, n_tracks)
        scene = _Scene(rng, size, frames, n_tracks, decimals=0,
                       schedules=_track_schedules(v, n_tracks))
        faults = _video_faults(scene, _faults_for_video(
            v, videos, broken, IMAGE_FAULTS, ('malformed_xml',) + BOX_FAULTS))
        for f in range(frames):
            fault = faults.get(f)
            key = dict(video=f'{subset}/{name}', frame=f)
            rel = f'Data/VID/train/{subset}/{name}/{f:06d}.JPEG'
            xml_rel = f'Annotations/VID/train/{subset}/{name}/{f:06d}.xml'
            readable = out.image(rel, scene.frame(f), fault, **key)
            objects = []
            anns = scene.annotations(f)
            for k, ann in enumerate(anns):
                box = _int_box(ann.box)
                if fault in BOX_FAULTS and k == 0:
                    box = _break_box(fault, box, *size)
                    out.fault(fault, xml_rel, track=ann.track, **key)
                objects.append([('trackid', ann.track), ('name', synsets[ann.track]),
                                ('bndbox', [('xmax', box[2]), ('xmin', box[0]),
                                            ('ymax', box[3]), ('ymin', box[1])]),
                                ('occluded', int(ann.occluded)), ('generated', 0)])
            xml = _voc_xml(f'{subset}/{name}', f'{f:06d}', size, 'ILSVRC_2015', objects)
            if fault == 'malformed_xml':
                xml = xml[:len(xml) // 2]
                out.fault(fault, xml_rel, **key)
            out.text(xml_rel, xml)
            if fault != 'malformed_xml':
                out.count(len(anns), len(anns) - int(fault in BOX_FAULTS) if readable else 0)
        out.totals['videos'] += 1
        bar.update()


def _jittered_size(rng, size):
    return (int(round(size[0] * rng.uniform(0.8, 1.2))), int(round(size[1] * rng.uniform(0.8, 1.2))))


def _image_scene(rng, size, empty, decimals):
    """A single-image scene with 1-4 objects (none if `empty`)."""
    n = 0 if empty else int(rng.integers(1, 5))
    return _Scene(rng, size, 1, n, decimals=decimals, pan=False, size_range=(0.1, 0.4))


_IMAGE_FAULT_AT = {1: 'truncated_jpeg', 3: 'corrupt_jpeg', 4: 'empty_jpeg', 5: 'missing_image',
                   6: 'box_outside_frame', 7: 'degenerate_box', 8: 'malformed_xml'}


def _rle_counts(mask):
    """Uncompressed COCO RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order='F')
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _write_coco(out, videos, frames, seed, size, broken, bar):
    images, annotations = [], []
    crowd = 0
    for i in range(videos):
        rng = _rng(seed, 'COCO', i)
        wh = _jittered_size(rng, size)
        scene = _image_scene(rng, wh, i == 2, decimals=2)
        image_id = 139 + 1009 * i
        fault = _IMAGE_FAULT_AT.get(i) if broken else None
        fault = None if fault == 'malformed_xml' else fault
        rel = f'train2017/{image_id:012d}.jpg'
        readable = out.image(rel, scene.frame(0), fault, image_id=image_id)
        images.append(dict(license=1, file_name=f'{image_id:012d}.jpg', coco_url='',
                           height=wh[1], width=wh[0], date_captured='2017-01-01 00:00:00',
                           flickr_url='', id=image_id))
        anns = scene.annotations(0)
        cats = rng.choice(len(_COCO_CATEGORIES), max(len(anns), 1))
        for k, ann in enumerate(anns):
            x1, y1, x2, y2 = (round(float(v), 2) for v in ann.box)
            bbox = [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
            is_crowd = int(i in (8, 9) and k == len(anns) - 1)
            crowd += is_crowd
            ellipse = scene.tracks[ann.track].ellipse
            if is_crowd:
                mask = np.zeros((wh[1], wh[0]), np.uint8)
                mask[int(y1):int(math.ceil(y2)), int(x1):int(math.ceil(x2))] = 1
                segmentation = dict(counts=_rle_counts(mask), size=[wh[1], wh[0]])
                area = float(mask.sum())
            else:
                if ellipse:
                    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    poly = np.stack([cx + (x2 - x1) / 2 * np.cos(ang),
                                     cy + (y2 - y1) / 2 * np.sin(ang)], 1).ravel()
                else:
                    poly = np.array([x1, y1, x2, y1, x2, y2, x1, y2])
                segmentation = [[round(float(p), 2) for p in poly]]
                area = round((math.pi / 4 if ellipse else 1.0) * bbox[2] * bbox[3], 2)
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


def _write_det(out, videos, frames, seed, size, broken, bar):
    jobs = [('ILSVRC2014_train_0000', f'ILSVRC2014_train_{i:08d}', i) for i in range(videos)]
    for k, synset in enumerate(('n01503061', 'n01503061', 'n02958343')):
        jobs.append((f'ILSVRC2013_train/{synset}', f'{synset}_{1000 + k}', videos + k))
    for folder_rel, name, i in jobs:
        rng = _rng(seed, 'DET', i)
        wh = _jittered_size(rng, size)
        in_2013 = folder_rel.startswith('ILSVRC2013')
        scene = _image_scene(rng, wh, i == 2 and not in_2013, decimals=0)
        fault = _IMAGE_FAULT_AT.get(i) if broken and not in_2013 else None
        rel = f'Data/DET/train/{folder_rel}/{name}.JPEG'
        xml_rel = f'Annotations/DET/train/{folder_rel}/{name}.xml'
        readable = out.image(rel, scene.frame(0), fault, image=name)
        anns = scene.annotations(0)
        names = rng.choice(_DET_SYNSETS, max(len(anns), 1))
        if in_2013:
            names[:] = folder_rel.split('/')[-1]
        objects = []
        for k, ann in enumerate(anns):
            box = _int_box(ann.box)
            if fault in BOX_FAULTS and k == 0:
                box = _break_box(fault, box, *wh)
                out.fault(fault, xml_rel, image=name, object=0)
            objects.append([('name', names[k]),
                            ('bndbox', [('xmin', box[0]), ('ymin', box[1]),
                                        ('xmax', box[2]), ('ymax', box[3])])])
        folder = folder_rel.split('/')[-1]
        xml = _voc_xml(folder, name, wh, 'ILSVRC_2014' if not in_2013 else 'ILSVRC_2013', objects)
        if fault == 'malformed_xml':
            xml = xml[:len(xml) // 2]
            out.fault(fault, xml_rel, image=name)
        out.text(xml_rel, xml)
        if fault != 'malformed_xml':
            out.count(len(anns), len(anns) - int(fault in BOX_FAULTS) if readable else 0)
        out.totals['videos'] += 1
        bar.update()


def _youtube_id(rng):
    alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    return ''.join(alphabet[int(k)] for k in rng.integers(0, len(alphabet), 11))


def _write_ytb(out, videos, frames, seed, size, broken, bar):
    w, h = size
    lines = []
    frames_root = 'yt_bb_detection_train'
    for v in range(videos):
        rng = _rng(seed, 'YTB', v)
        ytid = _youtube_id(rng)
        class_id, class_name = _YTB_CLASSES[int(rng.integers(len(_YTB_CLASSES)))]
        n_obj = int(rng.integers(1, 3))
        start_ms = int(rng.integers(0, 300)) * 1000
        # annotations are 1 s apart: the objects move about 1.7x further between rows
        scene = _Scene(rng, size, frames, n_obj, decimals=6, speed=1.7,
                       schedules=_track_schedules(v, n_obj))
        kinds = _faults_for_video(v, videos, broken, IMAGE_FAULTS,
                                  ('malformed_csv_row',) + BOX_FAULTS)
        faults = _video_faults(scene, kinds)
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
                    x1, y1, x2, y2 = _break_box(fault, (x1, y1, x2, y2), w, h)
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


def _single_target_scene(rng, v, size, frames, decimals):
    """One annotated target (gap in every other video) over 1-2 distractors."""
    return _Scene(rng, size, frames, 1, decimals=decimals,
                  schedules=['gap' if v % 2 == 0 else None], distractors=1 + v % 2)


def _write_got10k(out, videos, frames, seed, size, broken, bar):
    names = []
    for v in range(videos):
        rng = _rng(seed, 'GOT10K', v)
        name = f'GOT-10k_Train_{v + 1:06d}'
        names.append(name)
        scene = _single_target_scene(rng, v, size, frames, decimals=4)
        faults = _video_faults(scene, _faults_for_video(v, videos, broken, IMAGE_FAULTS, BOX_FAULTS))
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
                    box = _break_box(fault, box, *size)
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


def _write_lasot(out, videos, frames, seed, size, broken, bar):
    for v in range(videos):
        rng = _rng(seed, 'LASOT', v)
        cls = _LASOT_CLASSES[(v // 2) % len(_LASOT_CLASSES)]
        seq = f'{cls}/{cls}-{(v // 2) // len(_LASOT_CLASSES) * 2 + v % 2 + 1}'
        scene = _single_target_scene(rng, v, size, frames, decimals=0)
        faults = _video_faults(scene, _faults_for_video(v, videos, broken, IMAGE_FAULTS, BOX_FAULTS))
        hidden = [f for f in range(frames) if not scene.annotations(f)]
        gt, occlusion, out_of_view = [], [], []
        for f in range(frames):
            fault = faults.get(f)
            key = dict(video=seq, frame=f)
            readable = out.image(f'{seq}/img/{f + 1:08d}.jpg', scene.frame(f),
                                 fault if fault in IMAGE_FAULTS else None, **key)
            anns = scene.annotations(f)
            if anns:
                box = _int_box(anns[0].box)
                if fault in BOX_FAULTS:
                    box = _break_box(fault, box, *size)
                    out.fault(fault, f'{seq}/groundtruth.txt', line=f + 1, **key)
                occ = oov = 0
                out.count(1, int(readable and fault not in BOX_FAULTS))
            elif hidden.index(f) < len(hidden) // 2:
                box, occ, oov = [0, 0, 0, 0], 0, 1
            else:
                box, occ, oov = _int_box(scene.tracks[0].boxes[f]), 1, 0
            gt.append(f'{box[0]},{box[1]},{box[2] - box[0]},{box[3] - box[1]}')
            occlusion.append(str(occ))
            out_of_view.append(str(oov))
        out.text(f'{seq}/groundtruth.txt', '\n'.join(gt) + '\n')
        out.text(f'{seq}/full_occlusion.txt', ','.join(occlusion) + '\n')
        out.text(f'{seq}/out_of_view.txt', ','.join(out_of_view) + '\n')
        out.text(f'{seq}/nlp.txt', f'a textured {cls} moving over a textured background\n')
        out.totals['videos'] += 1
        bar.update()


_WRITERS = {'VID': _write_vid, 'COCO': _write_coco, 'DET': _write_det, 'YTB': _write_ytb,
            'GOT10K': _write_got10k, 'LASOT': _write_lasot}


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
def canonical_name(name: str) -> str:
    """Dataset name as used here (YOUTUBEBB -> YTB); ValueError for unknown names."""
    key = str(name).upper()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; expected one of {", ".join(DATASETS)}')
    return key


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    try:
        w, h = (int(p) for p in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'size {text!r} is not WIDTHxHEIGHT, e.g. 320x240') from None
    return w, h


def _check_args(videos, frames, size, min_frames):
    if videos < 1:
        raise ValueError(f'videos must be >= 1, got {videos}')
    if frames < min_frames:
        raise ValueError(f'frames must be >= {min_frames}, got {frames}')
    if size[0] < 64 or size[1] < 64:
        raise ValueError(f'size must be at least 64x64, got {size[0]}x{size[1]}')


def _prepare_root(root: Path, overwrite: bool):
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f'output directory {root} is not empty '
                                  '(pass overwrite=True / --force to replace earlier synthetic data)')
        if not any((root / m).exists() for m in MARKERS):
            raise FileExistsError(f'refusing to delete {root}: it has no {" or ".join(MARKERS)}, '
                                  'so it is not synthetic data written by this module')
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def make_dataset(name, out_dir, videos=None, frames=None, seed=0, size=None,
                 broken=True, overwrite=False, progress=False) -> dict:
    """Write dataset `name` (VID, COCO, DET, YTB, GOT10K, LASOT) in its raw layout.

    `videos` is the number of images for COCO/DET; `frames` is ignored there.
    Defaults are in DEFAULTS. Returns the broken.json manifest plus `root` and
    `seconds`.
    """
    name = canonical_name(name)
    d_videos, d_frames, d_size = DEFAULTS[name]
    videos = d_videos if videos is None else int(videos)
    frames = d_frames if frames is None or name in ('COCO', 'DET') else int(frames)
    size = d_size if size is None else tuple(int(s) for s in size)
    _check_args(videos, frames, size, 1 if name in ('COCO', 'DET') else 2)
    root = Path(out_dir)
    start = time.perf_counter()
    _prepare_root(root, overwrite)
    out = _Writer(root, name, int(seed), broken)
    total = videos + (3 if name == 'DET' else 0)
    with tqdm(total=total, desc=name, unit='video' if frames > 1 else 'image',
              disable=not progress, leave=False) as bar:
        extra = _WRITERS[name](out, videos, frames, int(seed), size, broken, bar)
    manifest = out.finish(extra)
    return dict(manifest, root=str(root), seconds=time.perf_counter() - start)


def make_all(out_dir, videos=None, frames=None, seed=0, size=None, broken=True,
             overwrite=False, progress=False) -> list[dict]:
    """Write every dataset into out_dir/<NAME>/; returns the per-dataset summaries."""
    return [make_dataset(n, Path(out_dir) / n, videos, frames, seed, size, broken,
                         overwrite, progress) for n in DATASETS]


def make_eval(out_dir, videos=None, frames=None, seed=0, size=None,
              overwrite=False, progress=False) -> dict:
    """Write held-out OTB-layout sequences plus a PySOT-toolkit SYNTH.json index."""
    d_videos, d_frames, d_size = DEFAULTS['EVAL']
    videos = d_videos if videos is None else int(videos)
    frames = d_frames if frames is None else int(frames)
    size = d_size if size is None else tuple(int(s) for s in size)
    _check_args(videos, frames, size, 2)
    root = Path(out_dir)
    start = time.perf_counter()
    _prepare_root(root, overwrite)
    index = {}
    for v in tqdm(range(videos), desc='EVAL', unit='video', disable=not progress, leave=False):
        rng = _rng(seed, 'EVAL', v)
        seq = f'Synth{v + 1:02d}'
        scene = _Scene(rng, size, frames, 1, decimals=0, distractors=1, easy=True)
        rects, names = [], []
        for f in range(frames):
            rel = f'{seq}/img/{f + 1:04d}.jpg'
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            data = cv2.imencode('.jpg', scene.frame(f), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])[1]
            (root / rel).write_bytes(data.tobytes())
            x1, y1, x2, y2 = _int_box(scene.annotations(f)[0].box)
            rects.append([x1, y1, x2 - x1, y2 - y1])
            names.append(rel)
        (root / seq / 'groundtruth_rect.txt').write_text(
            ''.join(','.join(map(str, r)) + '\n' for r in rects))
        index[seq] = dict(video_dir=seq, init_rect=rects[0], img_names=names, gt_rect=rects, attr=[])
    atomic_write(root / 'SYNTH.json', json.dumps(index) + '\n')
    return dict(dataset='EVAL', root=str(root), seed=int(seed), sequences=list(index),
                totals=dict(videos=videos, image_files=videos * frames),
                seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------
# shard folders with realistic values (benchmarks of the read path and the index)
# ----------------------------------------------------------------------------
def realistic_crops(n: int, seed: int = 0, size: int = 511) -> list:
    """`n` distinct size x size JPEGs (quality 95) of about 30-35 KB, the size of real training crops:
    a smooth colour field with faint luminance noise (flat synthetic crops are 5-10x smaller)."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for _ in range(int(n)):
        field = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8), (size, size),
                           interpolation=cv2.INTER_CUBIC).astype(np.float32)
        noise = rng.normal(0, rng.uniform(0.4, 0.6), (size, size, 1)).astype(np.float32)
        img = np.clip(field + noise, 0, 255).astype(np.uint8)
        out.append(cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return out


def _synthetic_layout(entries: int, per_track: int, tracks_per_video: int):
    """(video_track_start, track_entry_start) of `entries` entries in tracks of `per_track`."""
    n_tracks = -(-entries // per_track)
    track_start = np.minimum(np.arange(n_tracks + 1, dtype=np.int64) * per_track, entries)
    n_videos = -(-n_tracks // tracks_per_video)
    video_start = np.minimum(np.arange(n_videos + 1, dtype=np.int64) * tracks_per_video, n_tracks)
    return video_start, track_start


def make_shards(out_dir, entries: int, dataset: str = 'VID', distinct: int = 256, alias: bool = False,
                per_track: int = 50, tracks_per_video: int = 2, shard_size: int = 4 << 30, seed: int = 0,
                overwrite: bool = False, progress: bool = False) -> dict:
    """A complete shard folder ``out_dir/<dataset>/`` (format of `pipeline.shards`) of `entries` crops
    whose values are `distinct` realistic 511 JPEGs (`realistic_crops`) repeated: videos of
    `tracks_per_video` tracks of `per_track` frames, random boxes.

    alias=False: every entry is its own LMDB key and value, written by the real shard writer and indexed
    by the real index assembly (100k entries = about 3.3 GB).  alias=True: only the `distinct` values
    are stored and the index's entries point at them (byte ranges and CRCs of those values): a
    10M-entry index in seconds, for measuring the index and the reader; `--verify` does not apply.
    Returns {'folder', 'entries', 'bytes', 'seconds'}.
    """
    from .ingest.crop_worker import CropParams
    from .ingest.index import assemble_index, write_index
    from .ingest.writer import ShardSetWriter

    start = time.perf_counter()
    name = canonical_name(dataset)
    folder = Path(out_dir) / name
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f'{folder} is not empty (pass overwrite=True / --force to replace it)')
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, distinct = int(entries), max(1, min(int(distinct), int(entries)))
    rng = np.random.default_rng([seed, entries])
    crops = realistic_crops(distinct, seed)
    crcs = [zlib.crc32(c) for c in crops]
    video_start, track_start = _synthetic_layout(entries, per_track, tracks_per_video)
    videos = len(video_start) - 1
    names = [f'synth/{v:08d}' for v in range(videos)]
    wh = rng.uniform(20, 300, (entries, 2))
    xy = rng.uniform(0, 1000, (entries, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    params = {'format_version': 2, 'dataset': name, 'mode': 'synthetic', 'entries': entries, 'distinct': distinct,
              'alias': bool(alias), 'seed': int(seed)}
    atomic_write(folder / 'build_params.json', json.dumps(params, indent=1))
    meta = {'dataset': name, 'crop': CropParams().to_dict(), 'synthetic': params}
    writer = ShardSetWriter(folder, shard_size)
    bar = tqdm(total=entries if not alias else distinct, unit='crop', desc=f'{name} shards',
               disable=not progress, leave=False)
    try:
        if alias:
            writer.write({'video': 'pool', 'tracks': [[0, list(range(distinct)), [0.0, 0.0, 1.0, 1.0] * distinct]],
                          'jpegs': [crops], 'crcs': [crcs], 'drops': {}, 'files': []})
            bar.update(distinct)
        else:
            for v in range(videos):
                tracks, jpegs, tcrcs = [], [], []
                for t in range(int(video_start[v]), int(video_start[v + 1])):
                    e0, e1 = int(track_start[t]), int(track_start[t + 1])
                    tracks.append([t - int(video_start[v]), list(range(e1 - e0)), boxes[e0:e1].ravel().tolist()])
                    jpegs.append([crops[e % distinct] for e in range(e0, e1)])
                    tcrcs.append([crcs[e % distinct] for e in range(e0, e1)])
                writer.write({'video': names[v], 'tracks': tracks, 'jpegs': jpegs, 'crcs': tcrcs,
                              'drops': {}, 'files': []})
                bar.update(int(track_start[video_start[v + 1]] - track_start[video_start[v]]))
    finally:
        writer.close()
        bar.close()
    if not alias:
        index, _, _ = assemble_index(folder, writer.shard_paths(), meta, names)
        return dict(folder=str(folder), entries=entries, bytes=index['counts']['bytes'],
                    seconds=time.perf_counter() - start)
    # alias: the pool's byte ranges from its (real) index, then entries that point at them
    pool, _, _ = assemble_index(folder, writer.shard_paths(), meta, ['pool'])
    from .shards import ShardIndex
    pool_index = ShardIndex(folder)
    value = np.arange(entries) % distinct
    offsets = pool_index.arrays['entry_offset'][value]
    lengths = pool_index.arrays['entry_length'][value]
    n_tracks = len(track_start) - 1
    name_bytes = np.frombuffer(''.join(names).encode(), np.uint8)
    arrays = {
        'video_track_start': video_start, 'track_entry_start': track_start,
        'track_ids': np.arange(n_tracks) - np.repeat(video_start[:-1], np.diff(video_start)),
        'entry_frame': np.arange(entries) - np.repeat(track_start[:-1], np.diff(track_start)),
        'entry_box': boxes, 'entry_shard': np.zeros(entries, np.uint16), 'entry_offset': offsets,
        'entry_length': lengths, 'entry_crc': np.asarray(crcs, np.uint32)[value],
        'video_name_start': np.arange(videos + 1) * len(names[0]), 'video_name_bytes': name_bytes,
        'video_name_order': np.arange(videos)}
    del pool_index
    counts = {'videos': videos, 'tracks': n_tracks, 'entries': entries, 'shards': 1, 'bytes': int(lengths.sum())}
    write_index(folder, {**meta, 'counts': counts, 'shards': pool['shards']}, arrays)
    return dict(folder=str(folder), entries=entries, bytes=counts['bytes'], seconds=time.perf_counter() - start)
