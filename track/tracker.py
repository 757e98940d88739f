"""Single-object trackers over a Siamese model, with PySOT's tracking semantics.

`SiamRPNTracker` reproduces PySOT's `SiamRPNTracker` step by step (template crop with rounded
context size and mean-colour padding, search crop at TRACK.INSTANCE_SIZE, softmax score on the
anchor-major score map, scale/ratio change penalty, cosine window, size learning rate, clipping
to the frame), so the same weights on the same video give the same boxes.  `SiamRPNLTTracker`
adds PySOT's lost mode (wider search, almost no window) and `SiamMaskTracker` adds the mask →
rotated-box step.  `StaticTracker` is the "never moves" baseline.

The model contract: `model.template(z)` with z (1, 3, EXEMPLAR, EXEMPLAR) float BGR 0..255 and
`model.track(x)` → {'cls': (1, 2A, S, S), 'loc': (1, 4A, S, S)} where cls channels 0..A-1 are
class 0 (background) and A..2A-1 class 1, and loc channels are (dx, dy, dw, dh) blocks of A.
Trackers take the config object as an argument (duck-typed, PySOT key names).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from pipeline.anchors import tracker_anchors
from pipeline.crop import siamfc_crop_size


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device('cpu')


def get_subwindow(img: np.ndarray, pos, model_sz: int, original_sz: int, avg_chans,
                  device=None) -> torch.Tensor:
    """Square crop of side `original_sz` centred on `pos` resized to `model_sz` (PySOT semantics).

    The window starts at floor(pos - (sz + 1) / 2 + 0.5) and spans sz pixels; parts outside the
    image are filled with `avg_chans` written into a uint8 canvas (so the colour is truncated to
    integers, as in PySOT), then cv2.resize (bilinear) to model_sz if the sizes differ.
    Returns a (1, 3, model_sz, model_sz) float32 BGR tensor, not normalised.
    """
    sz = int(original_sz)
    h, w, k = img.shape
    c = (sz + 1) / 2
    xmin = int(np.floor(pos[0] - c + 0.5))
    ymin = int(np.floor(pos[1] - c + 0.5))
    xmax, ymax = xmin + sz - 1, ymin + sz - 1
    left, top = max(0, -xmin), max(0, -ymin)
    right, bottom = max(0, xmax - w + 1), max(0, ymax - h + 1)
    if left or top or right or bottom:
        # Only the window is built (not a padded copy of the whole frame): fill, then the part
        # of the image inside it.
        patch = np.empty((sz, sz, k), np.uint8)
        patch[...] = np.asarray(avg_chans, np.float64).astype(np.uint8)
        y0, y1 = max(ymin, 0), min(ymax + 1, h)
        x0, x1 = max(xmin, 0), min(xmax + 1, w)
        if y1 > y0 and x1 > x0:
            patch[y0 - ymin:y1 - ymin, x0 - xmin:x1 - xmin] = img[y0:y1, x0:x1]
    else:
        patch = img[ymin:ymax + 1, xmin:xmax + 1]
    if model_sz != sz:
        patch = cv2.resize(patch, (model_sz, model_sz))
    # uint8 crosses to the device (a quarter of the bytes); the exact cast to float runs there
    tensor = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)[None]))
    return (tensor.to(device) if device is not None else tensor).float()


def score_size(instance_size: int, cfg) -> int:
    """Side of the score map for a search crop of `instance_size` (PySOT's formula)."""
    return (instance_size - cfg.TRACK.EXEMPLAR_SIZE) // cfg.ANCHOR.STRIDE + 1 + cfg.TRACK.BASE_SIZE


def cosine_window(size: int, anchor_num: int) -> np.ndarray:
    """Outer product of Hanning windows, flattened and tiled per anchor (anchor-major)."""
    hanning = np.hanning(size)
    return np.tile(np.outer(hanning, hanning).flatten(), anchor_num)


def _softmax_fg(cls: torch.Tensor) -> np.ndarray:
    """Foreground probability per anchor, anchor-major, from a (1, 2A, S, S) map."""
    logits = cls.permute(1, 2, 3, 0).contiguous().view(2, -1).permute(1, 0)
    return torch.softmax(logits, dim=1)[:, 1].float().cpu().numpy()


def decode_boxes(loc: torch.Tensor, anchors: np.ndarray) -> np.ndarray:
    """(4, A*S*S) boxes (cx, cy, w, h) relative to the search centre, in search-crop pixels."""
    delta = loc.permute(1, 2, 3, 0).contiguous().view(4, -1).float().cpu().numpy().copy()
    delta[0] = delta[0] * anchors[:, 2] + anchors[:, 0]
    delta[1] = delta[1] * anchors[:, 3] + anchors[:, 1]
    delta[2] = np.exp(delta[2]) * anchors[:, 2]
    delta[3] = np.exp(delta[3]) * anchors[:, 3]
    return delta


def _xywh(cx, cy, w, h) -> list:
    return [float(cx - w / 2), float(cy - h / 2), float(w), float(h)]


def _change(r):
    return np.maximum(r, 1.0 / r)


def change_penalty(pred: np.ndarray, size, scale_z: float, penalty_k: float) -> np.ndarray:
    """exp(-(r_c * s_c - 1) * k): scale change s_c and aspect-ratio change r_c vs the current size."""
    s_c = _change(siamfc_crop_size(pred[2], pred[3]) / siamfc_crop_size(size[0] * scale_z, size[1] * scale_z))
    r_c = _change((size[0] / size[1]) / (pred[2] / pred[3]))
    return np.exp(-(r_c * s_c - 1) * penalty_k)


class SiamRPNTracker:
    """PySOT's SiamRPN(++) tracker.  `init(img, [x, y, w, h])` then `track(img)` per frame."""

    def __init__(self, cfg, model, device=None):
        self.cfg = cfg
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.anchor_num = len(cfg.ANCHOR.RATIOS) * len(cfg.ANCHOR.SCALES)
        self.score_size = score_size(cfg.TRACK.INSTANCE_SIZE, cfg)
        self.window = cosine_window(self.score_size, self.anchor_num)
        self.anchors = self.generate_anchor(self.score_size)

    def generate_anchor(self, size: int) -> np.ndarray:
        a = self.cfg.ANCHOR
        return tracker_anchors(a.STRIDE, a.RATIOS, a.SCALES, size)

    def _context_size(self) -> float:
        return siamfc_crop_size(self.size[0], self.size[1], self.cfg.TRACK.CONTEXT_AMOUNT)

    def _clip(self, cx, cy, w, h, shape):
        height, width = shape[:2]
        return (max(0, min(cx, width)), max(0, min(cy, height)),
                max(10, min(w, width)), max(10, min(h, height)))

    @torch.no_grad()
    def init(self, img: np.ndarray, bbox) -> None:
        """Start tracking the box [x, y, w, h] (0-based) in BGR uint8 frame `img`."""
        x, y, w, h = (float(v) for v in bbox)
        self.center_pos = np.array([x + (w - 1) / 2, y + (h - 1) / 2])
        self.size = np.array([w, h])
        s_z = round(self._context_size())
        self.channel_average = np.mean(img, axis=(0, 1))
        z = get_subwindow(img, self.center_pos, self.cfg.TRACK.EXEMPLAR_SIZE, s_z,
                          self.channel_average, self.device)
        self.model.template(z)

    def _search(self, img, instance_size, anchors, window, window_influence):
        """One search step; returns (pred box in image units rel. to centre, penalty, score, best idx, s_x)."""
        t = self.cfg.TRACK
        s_z = self._context_size()
        scale_z = t.EXEMPLAR_SIZE / s_z
        s_x = round(s_z * (instance_size / t.EXEMPLAR_SIZE))
        x = get_subwindow(img, self.center_pos, instance_size, s_x, self.channel_average, self.device)
        outputs = self.model.track(x)
        score = _softmax_fg(outputs['cls'])
        # an untrained network overflows exp(dw); PySOT carries on the same way, quietly here
        with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
            pred = decode_boxes(outputs['loc'], anchors)
            penalty = change_penalty(pred, self.size, scale_z, t.PENALTY_K)
            pscore = penalty * score * (1 - window_influence) + window * window_influence
        best = int(np.argmax(pscore))
        # float64 like PySOT's (its scale_z is a NumPy float64); float32 here drifts ~1e-5 px a frame
        return pred[:, best].astype(np.float64) / scale_z, penalty, score, best, s_x, outputs

    def _update(self, bbox, lr):
        cx = bbox[0] + self.center_pos[0]
        cy = bbox[1] + self.center_pos[1]
        w = self.size[0] * (1 - lr) + bbox[2] * lr
        h = self.size[1] * (1 - lr) + bbox[3] * lr
        return cx, cy, w, h

    @torch.no_grad()
    def track(self, img: np.ndarray) -> dict:
        """Track one frame; returns {'bbox': [x, y, w, h], 'best_score': float}."""
        t = self.cfg.TRACK
        bbox, penalty, score, best, _, self._last = self._search(
            img, t.INSTANCE_SIZE, self.anchors, self.window, t.WINDOW_INFLUENCE)
        self._best = best
        lr = penalty[best] * score[best] * t.LR
        cx, cy, w, h = self._clip(*self._update(bbox, lr), img.shape)
        self.center_pos = np.array([cx, cy])
        self.size = np.array([w, h])
        return {'bbox': _xywh(cx, cy, w, h), 'best_score': float(score[best])}


class SiamRPNLTTracker(SiamRPNTracker):
    """PySOT's long-term variant: below CONFIDENCE_LOW it keeps its state and searches a
    LOST_INSTANCE_SIZE crop with window influence 0.001 until a score above CONFIDENCE_HIGH.

    Unlike PySOT, `init` also leaves lost mode (PySOT keeps the flag across videos).
    """

    LOST_WINDOW_INFLUENCE = 0.001

    def __init__(self, cfg, model, device=None):
        super().__init__(cfg, model, device)
        self.longterm_state = False
        lost = score_size(cfg.TRACK.LOST_INSTANCE_SIZE, cfg)
        self._lost_anchors = self.generate_anchor(lost)
        self._lost_window = cosine_window(lost, self.anchor_num)

    def init(self, img, bbox):
        self.longterm_state = False
        super().init(img, bbox)

    @torch.no_grad()
    def track(self, img: np.ndarray) -> dict:
        t = self.cfg.TRACK
        if self.longterm_state:
            args = (t.LOST_INSTANCE_SIZE, self._lost_anchors, self._lost_window, self.LOST_WINDOW_INFLUENCE)
        else:
            args = (t.INSTANCE_SIZE, self.anchors, self.window, t.WINDOW_INFLUENCE)
        bbox, penalty, score, best, _, _ = self._search(img, *args)
        best_score = float(score[best])
        if best_score >= t.CONFIDENCE_LOW:
            cx, cy, w, h = self._update(bbox, penalty[best] * score[best] * t.LR)
        else:
            (cx, cy), (w, h) = self.center_pos, self.size
        # PySOT stores the unclipped state and clips only the returned box.
        self.center_pos = np.array([cx, cy])
        self.size = np.array([w, h])
        cx, cy, w, h = self._clip(cx, cy, w, h, img.shape)
        if best_score < t.CONFIDENCE_LOW:
            self.longterm_state = True
        elif best_score > t.CONFIDENCE_HIGH:
            self.longterm_state = False
        return {'bbox': _xywh(cx, cy, w, h), 'best_score': best_score}


class SiamMaskTracker(SiamRPNTracker):
    """PySOT's SiamMask tracker: SiamRPN box plus a mask at the best position, pasted back into
    the frame, thresholded at MASK_THERSHOLD and turned into a rotated rectangle (4 points).

    Uses `model.mask_refine((y, x))` when the model has a refine head (`model.has_refine`),
    else the raw mask vector outputs['mask'][0, :, y, x] (a square mask).
    """

    def __init__(self, cfg, model, device=None):
        if not hasattr(model, 'mask_head'):
            raise ValueError('SiamMaskTracker needs a model with a mask_head (cfg.MASK.MASK true)')
        super().__init__(cfg, model, device)

    def _mask_at(self, y: int, x: int) -> np.ndarray:
        if self.model.has_refine:
            mask = self.model.mask_refine((y, x))
        else:
            mask = self._last['mask'][0, :, y, x]
        mask = mask.sigmoid().float().flatten().cpu().numpy()
        side = int(round(math.sqrt(mask.size)))
        return mask.reshape(side, side)

    @staticmethod
    def _crop_back(mask, box, out_w, out_h):
        a = (out_w - 1) / box[2]
        b = (out_h - 1) / box[3]
        m = np.array([[a, 0, -a * box[0]], [0, b, -b * box[1]]], np.float64)
        return cv2.warpAffine(mask, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _polygon(self, mask_in_img):
        binary = (mask_in_img > self.cfg.TRACK.MASK_THERSHOLD).astype(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
        areas = [cv2.contourArea(c) for c in contours]
        if contours and max(areas) > 100:
            pts = contours[int(np.argmax(areas))].reshape(-1, 2)
            return cv2.boxPoints(cv2.minAreaRect(pts))
        x, y = self.center_pos - self.size / 2
        w, h = self.size
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])

    @torch.no_grad()
    def track(self, img: np.ndarray) -> dict:
        t = self.cfg.TRACK
        s_x = round(self._context_size() * (t.INSTANCE_SIZE / t.EXEMPLAR_SIZE))
        crop_box = [self.center_pos[0] - s_x / 2, self.center_pos[1] - s_x / 2, s_x, s_x]
        out = super().track(img)
        _, dy, dx = np.unravel_index(self._best, (self.anchor_num, self.score_size, self.score_size))
        mask = self._mask_at(int(dy), int(dx))
        s = crop_box[2] / t.INSTANCE_SIZE
        stride, base = self.cfg.ANCHOR.STRIDE, t.BASE_SIZE
        sub = [crop_box[0] + (dx - base / 2) * stride * s, crop_box[1] + (dy - base / 2) * stride * s,
               s * t.EXEMPLAR_SIZE, s * t.EXEMPLAR_SIZE]
        k = mask.shape[0] / sub[2]  # = MASK_OUTPUT_SIZE / sub side with a refine head
        im_h, im_w = img.shape[:2]
        back = [-sub[0] * k, -sub[1] * k, im_w * k, im_h * k]
        mask_in_img = self._crop_back(mask.astype(np.float32), back, im_w, im_h)
        out['mask'] = mask_in_img
        out['polygon'] = self._polygon(mask_in_img).flatten().tolist()
        return out


class StaticTracker:
    """Baseline that reports its first box on every frame."""

    def init(self, img, bbox):
        self.box = [float(v) for v in bbox]

    def track(self, img):
        return {'bbox': list(self.box), 'best_score': 1.0}


TRACKERS = {'SiamRPNTracker': SiamRPNTracker, 'SiamRPNLTTracker': SiamRPNLTTracker,
            'SiamMaskTracker': SiamMaskTracker}


def build_tracker(cfg, model, device=None):
    """Tracker named by cfg.TRACK.TYPE around `model` (put in eval mode)."""
    name = cfg.TRACK.TYPE
    if name not in TRACKERS:
        raise ValueError(f'unknown TRACK.TYPE {name!r}; expected one of {sorted(TRACKERS)}')
    return TRACKERS[name](cfg, model, device)
