"""The scene renderer of the synthetic datasets: textures, trajectories, objects, painting.

A scene is textured objects (noise / stripes / checker / ring patterns; rectangles or ellipses) in
saturated colours that move smoothly, scale and change aspect over a low-saturation textured
background (one per video, slowly panning). Annotated tracks may follow a visibility schedule (a
gap, or an isolated single visible frame); unannotated distractors are drawn behind them.

Determinism: every video draws from its own stream ``random_stream(seed, dataset, video)``
(``numpy.random.default_rng([seed, crc32(dataset), video])``), so more videos never change the
pictures or boxes of earlier ones.

Box convention (all datasets): 0-based pixel-edge coordinates. A box covers ``x1 <= x < x2``;
``w = x2 - x1``. Integer formats (VID, DET, LaSOT, eval) have integer edges, so ``xmax - xmin`` is
exactly the object width, as PySOT computes it. Boxes are the full object extent clipped to the
frame; an occluded object keeps its full box. Objects never render as slivers: an object with
< 2 px or < 10 % of its area inside the frame is neither drawn nor annotated.
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

JPEG_QUALITY = 92  # of every written frame
_SUPERSAMPLE = 4
_TEX = 64


# ----------------------------------------------------------------------------
# random streams and textures
# ----------------------------------------------------------------------------
def random_stream(seed: int, *keys) -> np.random.Generator:
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


def _supersampled_alpha(fh, fw, ellipse, box):
    """The object's coverage of the pixels of its box: (pixel bounds ix1, iy1, ix2, iy2, alpha on a
    _SUPERSAMPLE-times finer grid, its u and v coordinates in [0, 1) of the box); None if off-frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ix1, iy1 = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
    ix2, iy2 = min(int(math.ceil(x2)), fw), min(int(math.ceil(y2)), fh)
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    ss = _SUPERSAMPLE
    xs = ix1 + (np.arange((ix2 - ix1) * ss, dtype=np.float32) + 0.5) / ss
    ys = iy1 + (np.arange((iy2 - iy1) * ss, dtype=np.float32) + 0.5) / ss
    u = (xs - x1) / (x2 - x1)
    v = (ys - y1) / (y2 - y1)
    if ellipse:
        alpha = ((2 * v[:, None] - 1) ** 2 + (2 * u[None, :] - 1) ** 2 <= 1.0)
    else:
        alpha = ((v[:, None] >= 0) & (v[:, None] < 1)) & ((u[None, :] >= 0) & (u[None, :] < 1))
    return (ix1, iy1, ix2, iy2), alpha.astype(np.float32), u, v


def coverage(shape, ellipse, box):
    """Fraction of each pixel of an HxW frame that the object covers (float32, area-averaged)."""
    fh, fw = shape[:2]
    out = np.zeros((fh, fw), np.float32)
    sampled = _supersampled_alpha(fh, fw, ellipse, box)
    if sampled is not None:
        (ix1, iy1, ix2, iy2), alpha, _, _ = sampled
        out[iy1:iy2, ix1:ix2] = cv2.resize(alpha, (ix2 - ix1, iy2 - iy1), interpolation=cv2.INTER_AREA)
    return out


def _paint(frame, texture, ellipse, box):
    """Alpha-blend a textured rectangle/ellipse with exact (sub-pixel) extent `box`.

    Coverage is computed on a _SUPERSAMPLE-times finer grid and area-averaged,
    so fractional box edges give partial-coverage pixels. Returns the covered
    area in pixels.
    """
    sampled = _supersampled_alpha(frame.shape[0], frame.shape[1], ellipse, box)
    if sampled is None:
        return 0.0
    (ix1, iy1, ix2, iy2), alpha, u, v = sampled
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
class Annotation:
    """One visible annotated track in one frame."""
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


class Scene:
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
                anns.append(Annotation(j, box, obj.boxes[i].copy(),
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
        """Visible annotated tracks at frame i (list of Annotation)."""
        return self._annotations[i]

    def label_map(self, i):
        """Object ids of frame i (uint8 HxW): 1 + the track index where that visible track covers at
        least half of the pixel and no later-drawn track does (later tracks occlude earlier ones, as
        `frame` paints them); 0 elsewhere.  The masks follow the rendered objects."""
        w, h = self.size
        ids = np.zeros((h, w), np.uint8)
        for ann in self._annotations[i]:
            obj = self.tracks[ann.track]
            ids[coverage((h, w), obj.ellipse, obj.boxes[i]) >= 0.5] = ann.track + 1
        return ids

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


def encode_jpeg(img) -> bytes:
    """A rendered frame as the JPEG bytes every synthetic dataset stores."""
    return cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def _voc_palette() -> list:
    """The 256-colour PASCAL VOC colour map that DAVIS and YouTube-VOS annotations use (index 0 black,
    1 dark red, 2 dark green, ..., 255 the void colour 224, 224, 192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_PALETTE = _voc_palette()


def encode_palette_png(ids) -> bytes:
    """An object-id map (uint8 HxW) as the palette PNG of DAVIS / YouTube-VOS annotations: the pixel
    value is the object id, the palette only colours it (OpenCV cannot write palette PNGs)."""
    from PIL import Image

    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    img = Image.frombytes('P', (ids.shape[1], ids.shape[0]), ids.tobytes())
    img.putpalette(VOC_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


def int_box(box):
    """The box with integer edges (integer annotation formats)."""
    return [int(round(float(v))) for v in box]


def track_schedules(v, n_tracks):
    """Visibility schedules of video v's tracks: a gap in every third track, and video 1's last
    track with an isolated single visible frame."""
    kinds = ['gap' if (v + j) % 3 == 0 else None for j in range(n_tracks)]
    if v == 1:
        kinds[-1] = 'isolated'
    return kinds


def jittered_size(rng, size):
    """An image size within ±20 % of `size` (image datasets: sizes vary per image)."""
    return (int(round(size[0] * rng.uniform(0.8, 1.2))), int(round(size[1] * rng.uniform(0.8, 1.2))))


def image_scene(rng, size, empty, decimals):
    """A single-image scene with 1-4 objects (none if `empty`)."""
    n = 0 if empty else int(rng.integers(1, 5))
    return Scene(rng, size, 1, n, decimals=decimals, pan=False, size_range=(0.1, 0.4))
