"""Single-object trackers over a Siamese model, with PySOT's tracking semantics, batched.

`SiamRPNTracker` reproduces PySOT's `SiamRPNTracker` step by step (template crop with rounded
context size and mean-colour padding, search crop at TRACK.INSTANCE_SIZE, softmax score on the
anchor-major score map, scale/ratio change penalty, cosine window, size learning rate, clipping
to the frame), so the same weights on the same video give the same boxes.  `SiamRPNLTTracker`
adds PySOT's lost mode (wider search, almost no window) and `SiamMaskTracker` adds the mask →
rotated-box step.  `StaticTracker` is the "never moves" baseline.

Each target's state (position, size, mean colour, template features, TRACK settings) is a
`TargetState`.  `init_batch(states, imgs, boxes)` and `track_batch(states, imgs)` serve many
targets with one network forward (the batched engine, `track.engine`, drives them);
`init(img, box)` / `track(img)` (PySOT's API) are the same code on a batch of one.  A state may
carry its own TRACK section (hyper-parameter search: one forward serves several settings).

The model contract: `model.template(z)` with z (B, 3, EXEMPLAR, EXEMPLAR) float BGR 0..255
caches the template features in `model.zf` (a tensor or a list of per-level tensors, batch
first), and `model.track(x)` → {'cls': (B, 2A, S, S), 'loc': (B, 4A, S, S)} correlates x[i]
with zf[i]; cls channels 0..A-1 are class 0 (background) and A..2A-1 class 1, loc channels are
(dx, dy, dw, dh) blocks of A.  The tracker keeps each target's slice of `zf` and hands the model
the stacked slices of the targets in a batch.  Trackers take the config as an argument
(duck-typed, PySOT key names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from pipeline.anchors import tracker_anchors
from pipeline.crop import siamfc_crop_size


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device('cpu')


def crop_patch(img: np.ndarray, pos, model_sz: int, original_sz: int, avg_chans) -> np.ndarray:
    """Square crop of side `original_sz` centred on `pos` resized to `model_sz` (PySOT semantics),
    as a (model_sz, model_sz, 3) uint8 array.

    The window starts at floor(pos - (sz + 1) / 2 + 0.5) and spans sz pixels; parts outside the
    image are filled with `avg_chans` written into a uint8 canvas (so the colour is truncated to
    integers, as in PySOT), then cv2.resize (bilinear) to model_sz if the sizes differ.
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
    return patch


def to_batch(patches, device=None, channels_last: bool = False) -> torch.Tensor:
    """(K, 3, S, S) float32 BGR tensor from K equal-sized (S, S, 3) uint8 patches.  uint8
    crosses to the device (a quarter of the bytes); the exact cast to float runs there.
    `channels_last` keeps the patches' own NHWC layout (faster convolutions on CPU)."""
    batch = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
    if not channels_last:
        batch = batch.contiguous()
    return (batch.to(device) if device is not None else batch).float()


def _score_side(instance_size, exemplar_size, stride, base_size) -> int:
    """Side of the score map for a search crop of `instance_size` (PySOT's formula)."""
    return (instance_size - exemplar_size) // stride + 1 + base_size


def cosine_window(size: int, anchor_num: int) -> np.ndarray:
    """Outer product of Hanning windows, flattened and tiled per anchor (anchor-major)."""
    hanning = np.hanning(size)
    return np.tile(np.outer(hanning, hanning).flatten(), anchor_num)


def foreground_scores(cls: torch.Tensor) -> np.ndarray:
    """(K, A*S*S) foreground probability per anchor, anchor-major, from (K, 2A, S, S) logits."""
    logits = cls.reshape(cls.shape[0], 2, -1)
    return torch.softmax(logits, dim=1)[:, 1].float().cpu().numpy()


def decode_boxes(loc: torch.Tensor, anchors: np.ndarray) -> np.ndarray:
    """(K, 4, A*S*S) boxes (cx, cy, w, h) relative to the search centre, in search-crop pixels."""
    delta = loc.reshape(loc.shape[0], 4, -1).float().cpu().numpy().copy()
    delta[:, 0] = delta[:, 0] * anchors[:, 2] + anchors[:, 0]
    delta[:, 1] = delta[:, 1] * anchors[:, 3] + anchors[:, 1]
    delta[:, 2] = np.exp(delta[:, 2]) * anchors[:, 2]
    delta[:, 3] = np.exp(delta[:, 3]) * anchors[:, 3]
    return delta


def _xywh(cx, cy, w, h) -> list:
    # Deliberately PySOT's: the output box starts at cx - w/2, while init puts the centre at
    # x + (w-1)/2 (see init_batch).  A box is handed back half a pixel left/up of where it went
    # in; kept so that the same weights give PySOT's boxes and figures.
    return [float(cx - w / 2), float(cy - h / 2), float(w), float(h)]


def _change(r):
    return np.maximum(r, 1.0 / r)


def change_penalty(pred: np.ndarray, size: np.ndarray, scale_z: np.ndarray,
                   penalty_k: np.ndarray) -> np.ndarray:
    """(K, N) exp(-(r_c * s_c - 1) * k): scale change s_c and aspect-ratio change r_c of the K x N
    candidate boxes `pred` (K, 4, N) against each target's size (K, 2) at its scale (K,)."""
    w, h = size[:, 0:1], size[:, 1:2]
    scale = scale_z[:, None]
    s_c = _change(siamfc_crop_size(pred[:, 2], pred[:, 3]) / siamfc_crop_size(w * scale, h * scale))
    r_c = _change((w / h) / (pred[:, 2] / pred[:, 3]))
    return np.exp(-(r_c * s_c - 1) * penalty_k[:, None])


def _stack_features(features: list):
    """One batch from per-target template features (tensors, or lists of per-level tensors)."""
    first = features[0]
    if torch.is_tensor(first):
        return first if len(features) == 1 else torch.cat(features)
    return type(first)(_stack_features([f[i] for f in features]) for i in range(len(first)))


def _feature_slice(features, i: int):
    if torch.is_tensor(features):
        return features[i:i + 1]
    return type(features)(_feature_slice(f, i) for f in features)


@dataclass
class TargetState:
    """One tracked target: the TRACK settings it uses, its position and size (image pixels,
    centre and w/h), the mean colour of its first frame, its template features, lost mode."""
    track: Any
    center_pos: np.ndarray | None = None
    size: np.ndarray | None = None
    channel_average: np.ndarray | None = None
    kernel: Any = None
    lost: bool = False


class Candidate(NamedTuple):
    """The winning anchor of one search: box (cx, cy, w, h; centre relative to the target,
    image pixels), its change penalty and score, and its index on the anchor-major score map."""
    box: np.ndarray
    penalty: float
    score: float
    index: int


class SiamRPNTracker:
    """PySOT's SiamRPN(++) tracker.  `init(img, [x, y, w, h])` then `track(img)` per frame, or
    the batched `init_batch` / `track_batch` over `TargetState`s."""

    batchable = True  # track_batch serves many targets in one forward
    reports_speed = True

    def __init__(self, cfg, model, device=None, channels_last: bool = False):
        self.cfg = cfg
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.channels_last = bool(channels_last)
        self.anchor_num = len(cfg.ANCHOR.RATIOS) * len(cfg.ANCHOR.SCALES)
        self.map = map  # runs the per-target crops; the engine gives a thread pool's map
        self._geometries = {}
        self.state = self.new_state()

    def replica(self, model=None, channels_last=None) -> 'SiamRPNTracker':
        """The same tracker over `model` (default: the same model), e.g. an inference copy."""
        return type(self)(self.cfg, self.model if model is None else model, self.device,
                          self.channels_last if channels_last is None else channels_last)

    # -- geometry of a search at one crop size -------------------------------------------------
    def generate_anchor(self, size: int) -> np.ndarray:
        a = self.cfg.ANCHOR
        return tracker_anchors(a.STRIDE, a.RATIOS, a.SCALES, size)

    def _geometry(self, instance_size: int, track) -> tuple:
        """(score-map side, anchors, cosine window) of a search at `instance_size`."""
        key = (instance_size, track.EXEMPLAR_SIZE, track.BASE_SIZE)
        if key not in self._geometries:
            side = _score_side(instance_size, track.EXEMPLAR_SIZE, self.cfg.ANCHOR.STRIDE, track.BASE_SIZE)
            self._geometries[key] = (side, self.generate_anchor(side), cosine_window(side, self.anchor_num))
        return self._geometries[key]

    # -- PySOT-compatibility shims: the attributes PySOT's tracker exposes, for scripts written
    # against it (tracker.anchors, .window, .center_pos, .size); the state lives in `self.state`.
    @property
    def anchors(self) -> np.ndarray:
        return self._geometry(self.cfg.TRACK.INSTANCE_SIZE, self.cfg.TRACK)[1]

    @property
    def window(self) -> np.ndarray:
        return self._geometry(self.cfg.TRACK.INSTANCE_SIZE, self.cfg.TRACK)[2]

    @property
    def center_pos(self) -> np.ndarray:
        return self.state.center_pos

    @property
    def size(self) -> np.ndarray:
        return self.state.size

    # -- the single-target API (PySOT's) ---------------------------------------------------------
    def new_state(self, track=None) -> TargetState:
        """A fresh target using TRACK section `track` (default: the config's)."""
        return TargetState(self.cfg.TRACK if track is None else track)

    def init(self, img: np.ndarray, bbox) -> None:
        """Start tracking the box [x, y, w, h] (0-based) in BGR uint8 frame `img`."""
        self.state = self.new_state()
        self.init_batch([self.state], [img], [bbox])

    def track(self, img: np.ndarray) -> dict:
        """Track one frame; returns {'bbox': [x, y, w, h], 'best_score': float}."""
        return self.track_batch([self.state], [img])[0]

    # -- the batched core ------------------------------------------------------------------------
    @staticmethod
    def _context_size(state: TargetState) -> float:
        return siamfc_crop_size(state.size[0], state.size[1], state.track.CONTEXT_AMOUNT)

    def _crops(self, jobs: list) -> list:
        """crop_patch over [(img, pos, model_sz, original_sz, avg_chans)] with `self.map`."""
        return list(self.map(lambda job: crop_patch(*job), jobs))

    def _batch(self, patches) -> torch.Tensor:
        return to_batch(patches, self.device, self.channels_last)

    @torch.no_grad()
    def init_batch(self, states: list, imgs: list, boxes: list) -> None:
        """Start tracking boxes[i] ([x, y, w, h], 0-based) in frame imgs[i] for states[i].
        Targets with the same frame object, box and template geometry share one template."""
        means, unique, owner = {}, {}, []
        for state, img, box in zip(states, imgs, boxes):
            x, y, w, h = (float(v) for v in box)
            # PySOT's pixel-centre convention, deliberately unlike the output's cx - w/2 (`_xywh`)
            state.center_pos = np.array([x + (w - 1) / 2, y + (h - 1) / 2])
            state.size = np.array([w, h])
            state.lost = False
            if id(img) not in means:
                means[id(img)] = np.mean(img, axis=(0, 1))
            state.channel_average = means[id(img)]
            key = (id(img), x, y, w, h, state.track.EXEMPLAR_SIZE, state.track.CONTEXT_AMOUNT)
            owner.append(unique.setdefault(key, len(unique)))
        first = {}  # unique template -> the first target that asked for it
        for i, u in enumerate(owner):
            first.setdefault(u, i)
        kernels = {}
        by_size = {}
        for u, i in first.items():
            by_size.setdefault(states[i].track.EXEMPLAR_SIZE, []).append(u)
        for exemplar, group in by_size.items():
            patches = self._crops([(imgs[first[u]], states[first[u]].center_pos, exemplar,
                                    round(self._context_size(states[first[u]])),
                                    states[first[u]].channel_average) for u in group])
            self.model.template(self._batch(patches))
            features = getattr(self.model, 'zf', None)  # None: a model without cached features
            for j, u in enumerate(group):
                kernels[u] = None if features is None else _feature_slice(features, j)
        for state, u in zip(states, owner):
            state.kernel = kernels[u]

    def _search_mode(self, state: TargetState) -> tuple:
        """(search crop size, window influence) of the next search of `state`."""
        return state.track.INSTANCE_SIZE, state.track.WINDOW_INFLUENCE

    def _search(self, states: list, imgs: list, instance_size: int) -> tuple:
        """One forward over the search crops of `states` (same crop and template sizes).
        Returns ([Candidate per state], the network outputs)."""
        track = states[0].track
        side, anchors, window = self._geometry(instance_size, track)
        s_z = np.array([self._context_size(s) for s in states])
        scale_z = np.array([s.track.EXEMPLAR_SIZE for s in states]) / s_z
        patches = self._crops([(img, s.center_pos, instance_size,
                                round(sz * (instance_size / s.track.EXEMPLAR_SIZE)), s.channel_average)
                               for s, img, sz in zip(states, imgs, s_z)])
        kernels = [s.kernel for s in states]
        if all(k is not None for k in kernels):
            self.model.zf = _stack_features(kernels)
        outputs = self.model.track(self._batch(patches))
        score = foreground_scores(outputs['cls'])
        sizes = np.stack([s.size for s in states])
        penalty_k = np.array([s.track.PENALTY_K for s in states], np.float64)
        influence = np.array([self._search_mode(s)[1] for s in states], np.float64)[:, None]
        # an untrained network overflows exp(dw); PySOT carries on the same way, quietly here
        with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
            pred = decode_boxes(outputs['loc'], anchors)
            penalty = change_penalty(pred, sizes, scale_z, penalty_k)
            pscore = penalty * score * (1 - influence) + window * influence
        best = np.argmax(pscore, axis=1)
        rows = np.arange(len(states))
        # float64 like PySOT's (its scale_z is a NumPy float64); float32 here drifts ~1e-5 px a frame
        boxes = pred[rows, :, best].astype(np.float64) / scale_z[:, None]
        return [Candidate(boxes[k], penalty[k, best[k]], score[k, best[k]], int(best[k]))
                for k in rows], outputs

    @torch.no_grad()
    def track_batch(self, states: list, imgs: list) -> list:
        """Track imgs[i] for states[i]; one forward per group of equal search geometry.
        Returns one {'bbox': [x, y, w, h], 'best_score'} per state."""
        groups = {}
        for i, state in enumerate(states):
            size = self._search_mode(state)[0]
            groups.setdefault((size, state.track.EXEMPLAR_SIZE, state.track.BASE_SIZE), []).append(i)
        results = [None] * len(states)
        for (instance_size, _, _), idx in groups.items():
            group, group_imgs = [states[i] for i in idx], [imgs[i] for i in idx]
            candidates, outputs = self._search(group, group_imgs, instance_size)
            for i, result in zip(idx, self._results(group, group_imgs, candidates, outputs, instance_size)):
                results[i] = result
        return results

    def _results(self, states: list, imgs: list, candidates: list, outputs: dict, instance_size: int) -> list:
        """Each target's result of one search forward: moves it to its winning candidate."""
        return [self._advance(s, c, img.shape) for s, img, c in zip(states, imgs, candidates)]

    @staticmethod
    def _moved(state: TargetState, cand: Candidate) -> tuple:
        """(cx, cy, w, h) after moving to the candidate, the size updated at rate penalty*score*LR."""
        lr = cand.penalty * cand.score * state.track.LR
        return (cand.box[0] + state.center_pos[0], cand.box[1] + state.center_pos[1],
                state.size[0] * (1 - lr) + cand.box[2] * lr, state.size[1] * (1 - lr) + cand.box[3] * lr)

    @staticmethod
    def _clip(cx, cy, w, h, shape):
        height, width = shape[:2]
        return (max(0, min(cx, width)), max(0, min(cy, height)),
                max(10, min(w, width)), max(10, min(h, height)))

    def _advance(self, state: TargetState, cand: Candidate, shape) -> dict:
        """Apply the winning candidate to `state`; the frame's result."""
        cx, cy, w, h = self._clip(*self._moved(state, cand), shape)
        state.center_pos = np.array([cx, cy])
        state.size = np.array([w, h])
        return {'bbox': _xywh(cx, cy, w, h), 'best_score': float(cand.score)}


class SiamRPNLTTracker(SiamRPNTracker):
    """PySOT's long-term variant: below CONFIDENCE_LOW it keeps its state and searches a
    LOST_INSTANCE_SIZE crop with window influence 0.001 until a score above CONFIDENCE_HIGH.

    Unlike PySOT, `init` also leaves lost mode (PySOT keeps the flag across videos).
    """

    LOST_WINDOW_INFLUENCE = 0.001

    @property
    def longterm_state(self) -> bool:
        """PySOT-compatibility shim: PySOT's name for the lost flag (`TargetState.lost`)."""
        return self.state.lost

    def _search_mode(self, state):
        if state.lost:
            return state.track.LOST_INSTANCE_SIZE, self.LOST_WINDOW_INFLUENCE
        return state.track.INSTANCE_SIZE, state.track.WINDOW_INFLUENCE

    def _advance(self, state, cand, shape):
        t = state.track
        if cand.score >= t.CONFIDENCE_LOW:
            cx, cy, w, h = self._moved(state, cand)
        else:
            (cx, cy), (w, h) = state.center_pos, state.size
        # PySOT stores the unclipped state and clips only the returned box.
        state.center_pos = np.array([cx, cy])
        state.size = np.array([w, h])
        cx, cy, w, h = self._clip(cx, cy, w, h, shape)
        if cand.score < t.CONFIDENCE_LOW:
            state.lost = True
        elif cand.score > t.CONFIDENCE_HIGH:
            state.lost = False
        return {'bbox': _xywh(cx, cy, w, h), 'best_score': float(cand.score)}


class SiamMaskTracker(SiamRPNTracker):
    """PySOT's SiamMask tracker: SiamRPN box plus a mask at the best position, pasted back into
    the frame, thresholded at MASK_THERSHOLD and turned into a rotated rectangle (4 points).

    Uses `model.mask_refine` when the model has a refine head (`model.has_refine`), else the
    raw mask vector outputs['mask'][k, :, y, x] (a square mask).  Batched like SiamRPN: one
    search forward and one refine forward (a position per target) serve all targets; pasting
    and polygons run per target through `self.map`.
    """

    def __init__(self, cfg, model, device=None, channels_last: bool = False):
        if not getattr(model, 'has_mask', False):
            raise ValueError('SiamMaskTracker needs a model with a mask head (cfg.MASK.MASK true)')
        super().__init__(cfg, model, device, channels_last)

    def _masks_at(self, outputs: dict, cells: list) -> np.ndarray:
        """(K, m, m) mask probabilities of target k at its score-map cell (row, col)."""
        if self.model.has_refine:
            logits = self.model.mask_refine(cells)
        else:
            device = outputs['mask'].device
            rows = torch.tensor([r for r, _ in cells], device=device)
            cols = torch.tensor([c for _, c in cells], device=device)
            logits = outputs['mask'][torch.arange(len(cells), device=device), :, rows, cols]
        probs = logits.sigmoid().float().reshape(len(cells), -1).cpu().numpy()
        side = int(round(math.sqrt(probs.shape[1])))
        return probs.reshape(len(cells), side, side)

    @staticmethod
    def _crop_back(mask, box, out_w, out_h):
        a = (out_w - 1) / box[2]
        b = (out_h - 1) / box[3]
        m = np.array([[a, 0, -a * box[0]], [0, b, -b * box[1]]], np.float64)
        return cv2.warpAffine(mask, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _polygon(self, mask_in_img, state: TargetState):
        binary = (mask_in_img > state.track.MASK_THERSHOLD).astype(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
        areas = [cv2.contourArea(c) for c in contours]
        if contours and max(areas) > 100:
            pts = contours[int(np.argmax(areas))].reshape(-1, 2)
            return cv2.boxPoints(cv2.minAreaRect(pts))
        x, y = state.center_pos - state.size / 2
        w, h = state.size
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])

    def _paste(self, mask: np.ndarray, corner: np.ndarray, crop_side: float, cell: tuple,
               instance_size: int, track, shape) -> np.ndarray:
        """The mask of score-map cell (row, col) of a search crop of side `crop_side` at
        `corner` (x, y), warped into an (H, W) frame (PySOT's sub-window geometry)."""
        dy, dx = cell
        s = crop_side / instance_size
        stride, base = self.cfg.ANCHOR.STRIDE, track.BASE_SIZE
        sub = [corner[0] + (dx - base / 2) * stride * s, corner[1] + (dy - base / 2) * stride * s,
               s * track.EXEMPLAR_SIZE, s * track.EXEMPLAR_SIZE]
        k = mask.shape[0] / sub[2]  # = MASK_OUTPUT_SIZE / sub side with a refine head
        im_h, im_w = shape[:2]
        back = [-sub[0] * k, -sub[1] * k, im_w * k, im_h * k]
        return self._crop_back(mask.astype(np.float32), back, im_w, im_h)

    def _results(self, states, imgs, candidates, outputs, instance_size):
        track = states[0].track
        side = self._geometry(instance_size, track)[0]
        # the search crops, as `_search` cut them (before the targets move)
        crop_sides = [round(self._context_size(s) * (instance_size / s.track.EXEMPLAR_SIZE)) for s in states]
        corners = [s.center_pos - x / 2 for s, x in zip(states, crop_sides)]
        cells = [tuple(int(v) for v in np.unravel_index(c.index, (self.anchor_num, side, side))[1:])
                 for c in candidates]
        masks = self._masks_at(outputs, cells)

        def finish(k):
            out = self._advance(states[k], candidates[k], imgs[k].shape)
            mask_in_img = self._paste(masks[k], corners[k], crop_sides[k], cells[k], instance_size,
                                      states[k].track, imgs[k].shape)
            out['mask'] = mask_in_img
            out['polygon'] = self._polygon(mask_in_img, states[k]).flatten().tolist()
            return out

        return list(self.map(finish, range(len(states))))


class StaticTracker:
    """Baseline that reports its first box on every frame."""

    batchable = False
    reports_speed = False  # it does no work: its frames per second mean nothing

    def init(self, img, bbox):
        self.box = [float(v) for v in bbox]

    def track(self, img):
        return {'bbox': list(self.box), 'best_score': 1.0}


TRACKERS = {'SiamRPNTracker': SiamRPNTracker, 'SiamRPNLTTracker': SiamRPNLTTracker,
            'SiamMaskTracker': SiamMaskTracker}


def build_tracker(cfg, model, device=None, channels_last: bool = False):
    """Tracker named by cfg.TRACK.TYPE around `model` (put in eval mode)."""
    name = cfg.TRACK.TYPE
    if name not in TRACKERS:
        raise ValueError(f'unknown TRACK.TYPE {name!r}; expected one of {sorted(TRACKERS)}')
    return TRACKERS[name](cfg, model, device, channels_last)
