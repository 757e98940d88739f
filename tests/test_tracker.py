"""Tracker geometry against PySOT's formulas (computed independently here, with loops), a
tracker following a synthetic target, lost mode, the real network against a transcription of
PySOT's tracker, and SiamMask's mask placement."""
import copy
import math

import cv2

import numpy as np
import pytest
import torch
import torch.nn as nn

from model import build_model
from track.tracker import (SiamRPNLTTracker, SiamRPNTracker, StaticTracker, build_tracker, crop_patch,
                           to_batch)
from train.config import load_config


def pysot_anchor_wh(stride, ratios, scales):
    out = []
    for r in ratios:
        ws = int(math.sqrt(stride * stride / r))
        hs = int(ws * r)
        for s in scales:
            out.append((ws * s, hs * s))
    return out


class FixedOutputModel(nn.Module):
    """Returns preset cls/loc maps from track(); records the crops it was given."""

    def __init__(self, cls, loc):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.cls, self.loc = cls, loc
        self.templates, self.searches = [], []

    def template(self, z):
        self.templates.append(z.clone())

    def track(self, x):
        self.searches.append(x.clone())
        return {'cls': self.cls, 'loc': self.loc}


class OracleModel(nn.Module):
    """Finds the bright object in the search crop and answers with a sharp score peak on the
    nearest grid cell of the square anchor and exact regression deltas for its box."""

    def __init__(self, cfg):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.cfg = cfg
        self.wh = pysot_anchor_wh(cfg.ANCHOR.STRIDE, cfg.ANCHOR.RATIOS, cfg.ANCHOR.SCALES)
        self.search_sizes = []
        self.confidence = 10.0

    def template(self, z):
        pass

    def track(self, x):
        size = x.shape[-1]
        self.search_sizes.append(size)
        stride, a_num = self.cfg.ANCHOR.STRIDE, len(self.wh)
        s = (size - self.cfg.TRACK.EXEMPLAR_SIZE) // stride + 1 + self.cfg.TRACK.BASE_SIZE
        cls = torch.zeros(1, 2 * a_num, s, s)
        loc = torch.zeros(1, 4 * a_num, s, s)
        ys, xs = np.nonzero(x[0, 2].numpy() > 128)  # red channel of BGR
        if len(xs):
            # object box in crop pixels, relative to the crop centre (size - 1) / 2
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            c = (size - 1) / 2
            cx, cy, w, h = (x1 + x2 - 1) / 2 - c, (y1 + y2 - 1) / 2 - c, x2 - x1, y2 - y1
            gx = int(np.clip(round(cx / stride) + s // 2, 0, s - 1))
            gy = int(np.clip(round(cy / stride) + s // 2, 0, s - 1))
            acx, acy = (gx - s // 2) * stride, (gy - s // 2) * stride
            a = 2  # square anchor
            aw, ah = self.wh[a]
            cls[0, a_num + a, gy, gx] = self.confidence
            loc[0, 0 * a_num + a, gy, gx] = (cx - acx) / aw
            loc[0, 1 * a_num + a, gy, gx] = (cy - acy) / ah
            loc[0, 2 * a_num + a, gy, gx] = math.log(w / aw)
            loc[0, 3 * a_num + a, gy, gx] = math.log(h / ah)
        return {'cls': cls, 'loc': loc}


@pytest.fixture(scope='module')
def cfg():
    return load_config('configs/siamrpn_alex_dwxcorr.yaml')


def test_crop_patch_matches_pixel_loop_with_mean_padding():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    avg = img.mean(axis=(0, 1))
    sz, pos = 9, (2.3, 17.6)  # sticks out on the left
    patch = crop_patch(img, pos, sz, sz, avg)
    x0 = math.floor(pos[0] - (sz + 1) / 2 + 0.5)
    y0 = math.floor(pos[1] - (sz + 1) / 2 + 0.5)
    for i in range(sz):
        for j in range(sz):
            y, x = y0 + i, x0 + j
            want = img[y, x] if 0 <= y < 20 and 0 <= x < 30 else np.floor(avg)
            np.testing.assert_array_equal(patch[i, j], want)
    big = to_batch([crop_patch(img, pos, 17, sz, avg)])
    assert big.shape == (1, 3, 17, 17) and big.dtype == torch.float32
    np.testing.assert_array_equal(big[0].numpy().transpose(1, 2, 0), cv2.resize(patch, (17, 17)))


def pysot_track_step(cfg, center, size, cls, loc, img_shape):
    """PySOT's SiamRPNTracker.track decision written out with explicit loops."""
    t = cfg.TRACK
    stride = cfg.ANCHOR.STRIDE
    wh = pysot_anchor_wh(stride, cfg.ANCHOR.RATIOS, cfg.ANCHOR.SCALES)
    A, S = len(wh), cls.shape[-1]
    pad = 0.5 * (size[0] + size[1])
    s_z = math.sqrt((size[0] + pad) * (size[1] + pad))
    scale_z = t.EXEMPLAR_SIZE / s_z
    han = [0.5 - 0.5 * math.cos(2 * math.pi * n / (S - 1)) for n in range(S)]

    def szf(w, h):
        p = (w + h) / 2
        return math.sqrt((w + p) * (h + p))

    best = None
    for a in range(A):
        for y in range(S):
            for x in range(S):
                l0, l1 = float(cls[0, a, y, x]), float(cls[0, A + a, y, x])
                score = math.exp(l1) / (math.exp(l0) + math.exp(l1))
                aw, ah = wh[a]
                acx, acy = (x - S // 2) * stride, (y - S // 2) * stride
                d = [float(loc[0, k * A + a, y, x]) for k in range(4)]
                box = (d[0] * aw + acx, d[1] * ah + acy, math.exp(d[2]) * aw, math.exp(d[3]) * ah)
                sc = szf(box[2], box[3]) / szf(size[0] * scale_z, size[1] * scale_z)
                sc = max(sc, 1 / sc)
                rc = (size[0] / size[1]) / (box[2] / box[3])
                rc = max(rc, 1 / rc)
                pen = math.exp(-(rc * sc - 1) * t.PENALTY_K)
                ps = pen * score * (1 - t.WINDOW_INFLUENCE) + han[y] * han[x] * t.WINDOW_INFLUENCE
                if best is None or ps > best[0]:
                    best = (ps, box, pen, score)
    _, box, pen, score = best
    lr = pen * score * t.LR
    cx = box[0] / scale_z + center[0]
    cy = box[1] / scale_z + center[1]
    w = size[0] * (1 - lr) + box[2] / scale_z * lr
    h = size[1] * (1 - lr) + box[3] / scale_z * lr
    H, W = img_shape[:2]
    cx, cy = min(max(cx, 0), W), min(max(cy, 0), H)
    w, h = min(max(w, 10), W), min(max(h, 10), H)
    return (cx, cy), (w, h), score


class PysotSiamRPN:
    """Test-only transcription of PySOT's SiamRPNTracker (pysot/tracker/siamrpn_tracker.py, with
    SiameseTracker.get_subwindow from base_tracker.py) for one target, written independently of
    track/tracker.py: its own anchors, its crop through a padded copy of the whole frame, its
    score and box read-out in PySOT's (1, 2A, S, S) -> (A*S*S,) order, its float32 arrays."""

    def __init__(self, cfg, model):
        self.cfg, self.model = cfg, model.eval()
        t, a = cfg.TRACK, cfg.ANCHOR
        self.score_size = (t.INSTANCE_SIZE - t.EXEMPLAR_SIZE) // a.STRIDE + 1 + t.BASE_SIZE
        wh = pysot_anchor_wh(a.STRIDE, a.RATIOS, a.SCALES)
        self.anchor_num, s = len(wh), self.score_size
        origin = -(s // 2) * a.STRIDE
        self.anchors = np.zeros((self.anchor_num * s * s, 4), np.float32)
        for k, (w, h) in enumerate(wh):
            for y in range(s):
                for x in range(s):
                    self.anchors[k * s * s + y * s + x] = (origin + a.STRIDE * x, origin + a.STRIDE * y, w, h)
        self.window = np.tile(np.outer(np.hanning(s), np.hanning(s)).flatten(), self.anchor_num)

    @staticmethod
    def subwindow(img, pos, model_sz, original_sz, avg):
        c = (original_sz + 1) / 2
        xmin, ymin = np.floor(pos[0] - c + 0.5), np.floor(pos[1] - c + 0.5)
        xmax, ymax = xmin + original_sz - 1, ymin + original_sz - 1
        rows, cols, _ = img.shape
        left, top = int(max(0., -xmin)), int(max(0., -ymin))
        right, bottom = int(max(0., xmax - cols + 1)), int(max(0., ymax - rows + 1))
        padded = np.zeros((rows + top + bottom, cols + left + right, 3), np.uint8)
        padded[...] = avg  # PySOT fills each border strip with the mean; the same pixels
        padded[top:top + rows, left:left + cols] = img
        patch = padded[int(ymin + top):int(ymax + top + 1), int(xmin + left):int(xmax + left + 1)]
        if model_sz != original_sz:
            patch = cv2.resize(patch, (model_sz, model_sz))
        return torch.from_numpy(patch.transpose(2, 0, 1)[None].astype(np.float32))

    def init(self, img, bbox):
        self.center_pos = np.array([bbox[0] + (bbox[2] - 1) / 2, bbox[1] + (bbox[3] - 1) / 2])
        self.size = np.array([bbox[2], bbox[3]])
        t = self.cfg.TRACK
        context = t.CONTEXT_AMOUNT * np.sum(self.size)
        s_z = round(np.sqrt((self.size[0] + context) * (self.size[1] + context)))
        self.channel_average = np.mean(img, axis=(0, 1))
        self.model.template(self.subwindow(img, self.center_pos, t.EXEMPLAR_SIZE, s_z, self.channel_average))

    @torch.no_grad()
    def track(self, img):
        t = self.cfg.TRACK
        context = t.CONTEXT_AMOUNT * np.sum(self.size)
        s_z = np.sqrt((self.size[0] + context) * (self.size[1] + context))
        scale_z = t.EXEMPLAR_SIZE / s_z
        s_x = s_z * (t.INSTANCE_SIZE / t.EXEMPLAR_SIZE)
        out = self.model.track(self.subwindow(img, self.center_pos, t.INSTANCE_SIZE, round(s_x),
                                              self.channel_average))
        logits = out['cls'].permute(1, 2, 3, 0).contiguous().view(2, -1).permute(1, 0)
        score = torch.softmax(logits, dim=1)[:, 1].numpy()
        delta = out['loc'].permute(1, 2, 3, 0).contiguous().view(4, -1).numpy().copy()
        a = self.anchors
        delta[0] = delta[0] * a[:, 2] + a[:, 0]
        delta[1] = delta[1] * a[:, 3] + a[:, 1]
        delta[2] = np.exp(delta[2]) * a[:, 2]
        delta[3] = np.exp(delta[3]) * a[:, 3]

        def change(r):
            return np.maximum(r, 1. / r)

        def context_side(w, h):
            pad = (w + h) * 0.5
            return np.sqrt((w + pad) * (h + pad))

        s_c = change(context_side(delta[2], delta[3]) / context_side(self.size[0] * scale_z, self.size[1] * scale_z))
        r_c = change((self.size[0] / self.size[1]) / (delta[2] / delta[3]))
        penalty = np.exp(-(r_c * s_c - 1) * t.PENALTY_K)
        pscore = penalty * score * (1 - t.WINDOW_INFLUENCE) + self.window * t.WINDOW_INFLUENCE
        best = np.argmax(pscore)
        box = delta[:, best] / scale_z
        lr = penalty[best] * score[best] * t.LR
        cx, cy = box[0] + self.center_pos[0], box[1] + self.center_pos[1]
        width = self.size[0] * (1 - lr) + box[2] * lr
        height = self.size[1] * (1 - lr) + box[3] * lr
        rows, cols = img.shape[:2]
        cx, cy = max(0, min(cx, cols)), max(0, min(cy, rows))
        width, height = max(10, min(width, cols)), max(10, min(height, rows))
        self.center_pos, self.size = np.array([cx, cy]), np.array([width, height])
        return {'bbox': [cx - width / 2, cy - height / 2, width, height], 'best_score': score[best]}


def test_track_step_matches_pysot_formulas(cfg):
    g = torch.Generator().manual_seed(3)
    S, A = 21, 5
    cls = torch.randn(1, 2 * A, S, S, generator=g)
    cls[0, A + 3, 7, 14] += 6.0  # a clear winner away from the centre, tall anchor
    loc = 0.3 * torch.randn(1, 4 * A, S, S, generator=g)
    model = FixedOutputModel(cls, loc)
    tracker = SiamRPNTracker(cfg, model)
    img = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    init = (100.0, 60.0, 40.0, 70.0)
    tracker.init(img, init)
    assert model.templates[0].shape == (1, 3, 127, 127)
    center = (init[0] + (init[2] - 1) / 2, init[1] + (init[3] - 1) / 2)
    size = (init[2], init[3])
    for _ in range(3):
        out = tracker.track(img)
        center, size, score = pysot_track_step(cfg, center, size, cls, loc, img.shape)
        want = [center[0] - size[0] / 2, center[1] - size[1] / 2, size[0], size[1]]
        np.testing.assert_allclose(out['bbox'], want, rtol=1e-5, atol=1e-4)
        assert out['best_score'] == pytest.approx(score, rel=1e-5)
    assert model.searches[-1].shape == (1, 3, cfg.TRACK.INSTANCE_SIZE, cfg.TRACK.INSTANCE_SIZE)


def test_template_crop_uses_rounded_context_size(cfg):
    model = FixedOutputModel(None, None)
    tracker = SiamRPNTracker(cfg, model)
    img = np.zeros((200, 200, 3), np.uint8)
    img[90:110, 90:110] = 255  # 20x20 white square; s_z = round(sqrt(40*40)) = 40
    tracker.init(img, (90, 90, 20, 20))
    z = model.templates[0][0, 0].numpy()
    # centre 99.5, window start floor(99.5 - 41/2 + 0.5) = 79, 40 px wide: white columns
    # 11..30 of the window -> template columns [11, 31) * 127 / 40 = [34.9, 98.4)
    white = np.nonzero(z[63] > 127)[0]
    assert abs(white[0] - 11 * 127 / 40) <= 1 and abs(white[-1] + 1 - 31 * 127 / 40) <= 1


def moving_square_video(n=12, size=(240, 320), box=(60, 50, 36, 30), step=(6, 4)):
    frames, gts = [], []
    x, y, w, h = box
    for i in range(n):
        img = np.full(size + (3,), 40, np.uint8)
        xi, yi = x + step[0] * i, y + step[1] * i
        img[yi:yi + h, xi:xi + w] = (0, 0, 255)
        frames.append(img)
        gts.append((xi, yi, w, h))
    return frames, gts


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_tracker_follows_synthetic_target(cfg):
    frames, gts = moving_square_video()
    tracker = build_tracker(cfg, OracleModel(cfg))
    tracker.init(frames[0], gts[0])
    ious = [_iou(tracker.track(f)['bbox'], g) for f, g in zip(frames[1:], gts[1:])]
    assert min(ious) > 0.8, ious
    static = StaticTracker()
    static.init(frames[0], gts[0])
    assert _iou(static.track(frames[-1])['bbox'], gts[-1]) == 0.0


def test_long_term_tracker_enters_and_leaves_lost_mode(cfg):
    cfg = cfg.replace(['TRACK.TYPE=SiamRPNLTTracker', 'TRACK.CONFIDENCE_LOW=0.8',
                       'TRACK.CONFIDENCE_HIGH=0.99'])
    model = OracleModel(cfg)
    tracker = build_tracker(cfg, model)
    assert isinstance(tracker, SiamRPNLTTracker)
    frames, gts = moving_square_video(n=3)
    tracker.init(frames[0], gts[0])
    model.confidence = 0.0  # softmax(0, 0) = 0.5 < CONFIDENCE_LOW: lost
    state = tracker.center_pos.copy(), tracker.size.copy()
    tracker.track(frames[1])
    assert tracker.longterm_state
    np.testing.assert_allclose(tracker.center_pos, state[0])
    np.testing.assert_allclose(tracker.size, state[1])
    model.confidence = 10.0  # 0.99995 > CONFIDENCE_HIGH
    out = tracker.track(frames[2])
    assert model.search_sizes == [cfg.TRACK.INSTANCE_SIZE, cfg.TRACK.LOST_INSTANCE_SIZE]
    assert not tracker.longterm_state
    assert _iou(out['bbox'], gts[2]) > 0.5


def test_build_tracker_rejects_unknown_type(cfg):
    with pytest.raises(ValueError, match='TRACK.TYPE'):
        build_tracker(cfg.replace(['TRACK.TYPE=Nope']), OracleModel(cfg))


def damp_box_regression(model, factor=0.01):
    """Scale the last convolution of the RPN's box branch: a random network's boxes then stay near
    the anchors and the tracker moves by varied amounts (an undamped head jumps to the clip limits)."""
    convs = [m for m in model.rpn_head.modules() if isinstance(m, nn.Conv2d)]
    loc = [m for name, m in model.rpn_head.named_modules() if isinstance(m, nn.Conv2d) and 'loc' in name]
    with torch.no_grad():
        (loc or convs)[-1].weight.mul_(factor)
    return model


def test_real_alexnet_model_follows_pysots_tracker(cfg):
    """The real network (AlexNet, random init) through our tracker and through PySOT's
    SiamRPNTracker (transcribed below) give the same box and score on every frame."""
    torch.manual_seed(0)
    model = damp_box_regression(build_model(cfg))
    tracker = build_tracker(cfg, model)
    assert not model.training
    pysot = PysotSiamRPN(cfg, copy.deepcopy(model))
    frames, gts = moving_square_video(n=8)
    tracker.init(frames[0], gts[0])
    pysot.init(frames[0], gts[0])
    boxes = []
    for f in frames[1:]:
        ours, theirs = tracker.track(f), pysot.track(f)
        np.testing.assert_allclose(ours['bbox'], theirs['bbox'], rtol=0, atol=1e-3)
        assert ours['best_score'] == pytest.approx(float(theirs['best_score']), abs=1e-5)
        boxes.append(ours['bbox'])
    steps = np.abs(np.diff(np.array([gts[0]] + boxes), axis=0)).max(axis=1)
    assert steps.min() > 1e-3 and len(set(np.round(steps, 3))) > 3  # it moves, by varied amounts
    h, w = frames[0].shape[:2]
    assert all(10 < b[2] < w and 10 < b[3] < h for b in boxes)  # sizes away from the clip limits


class FixedMaskModel(FixedOutputModel):
    """FixedOutputModel plus a mask head answering a preset 127x127 logit map."""

    has_mask = has_refine = True

    def __init__(self, cls, loc, mask_logits):
        super().__init__(cls, loc)
        self.mask_head = nn.Identity()
        self.mask_logits = mask_logits
        self.refine_positions = []

    def mask_refine(self, pos):
        self.refine_positions.append(pos)
        return self.mask_logits.reshape(1, -1)


def test_mask_tracker_pastes_mask_at_the_best_position():
    cfg = load_config('configs/siammask_r50_l3.yaml')  # INSTANCE 255, BASE_SIZE 8: 25x25 map
    S, A = 25, 5
    cls = torch.zeros(1, 2 * A, S, S)
    cls[0, A + 2, 10, 12] = 12.0  # row 10, column 12, square anchor
    loc = torch.zeros(1, 4 * A, S, S)
    model = FixedMaskModel(cls, loc, torch.full((127, 127), 10.0))
    tracker = build_tracker(cfg, model)
    img = np.zeros((400, 400, 3), np.uint8)
    tracker.init(img, (180, 180, 40, 40))  # centre 199.5, s_z 80
    out = tracker.track(img)
    assert model.refine_positions == [[(10, 12)]]  # one (row, col) per target of the batch
    # by hand: s_x = round(80 * 255 / 127) = 161, crop starts at 199.5 - 80.5 = 119,
    # s = 161 / 255; sub-window = 119 + (col - 8/2) * 8 * s, side 127 * s
    s = 161 / 255
    x0, y0, side = 119 + (12 - 4) * 8 * s, 119 + (10 - 4) * 8 * s, 127 * s
    poly = np.array(out['polygon']).reshape(4, 2)
    assert abs(poly[:, 0].min() - x0) <= 2 and abs(poly[:, 0].max() - (x0 + side)) <= 2
    assert abs(poly[:, 1].min() - y0) <= 2 and abs(poly[:, 1].max() - (y0 + side)) <= 2
    assert out['mask'].shape == (400, 400)
    model.mask_logits = torch.full((127, 127), -10.0)  # empty mask: polygon = the box
    out = tracker.track(img)
    x, y, w, h = out['bbox']
    np.testing.assert_allclose(np.array(out['polygon']).reshape(4, 2),
                               [[x, y], [x + w, y], [x + w, y + h], [x, y + h]], atol=1e-6)


class FixedRawMaskModel(FixedOutputModel):
    """FixedOutputModel plus a mask head without refinement: outputs['mask'] is a preset
    (1, 63*63, S, S) map, one 63x63 mask vector per score-map position."""

    has_mask, has_refine = True, False

    def __init__(self, cls, loc, mask):
        super().__init__(cls, loc)
        self.mask = mask

    def track(self, x):
        return {**super().track(x), 'mask': self.mask}


def test_mask_tracker_without_refine_places_the_raw_mask():
    """SiamMask with REFINE off (the config default) pastes the mask head's raw 63x63 vector of
    the best position into its sub-window of the frame: a block in the mask lands on the frame
    where the geometry puts it (it once called mask_refine() and crashed)."""
    cfg = load_config('configs/siammask_r50_l3.yaml', overrides=['REFINE.REFINE=False'])
    S, A, M = 25, 5, 63
    cls = torch.zeros(1, 2 * A, S, S)
    cls[0, A + 2, 10, 12] = 12.0  # row 10, column 12, square anchor
    mask = torch.full((1, M * M, S, S), -10.0)
    block = torch.full((M, M), -10.0)
    block[8:40, 16:48] = 10.0  # rows 8..39, columns 16..47 of the mask
    mask[0, :, 10, 12] = block.flatten()
    model = FixedRawMaskModel(cls, torch.zeros(1, 4 * A, S, S), mask)
    tracker = build_tracker(cfg, model)
    img = np.zeros((400, 400, 3), np.uint8)
    tracker.init(img, (180, 180, 40, 40))  # centre 199.5, s_z 80
    out = tracker.track(img)
    # the sub-window of position (10, 12), as in the refine test: side 127 * s, s = 161 / 255
    s = 161 / 255
    x0, y0, side = 119 + (12 - 4) * 8 * s, 119 + (10 - 4) * 8 * s, 127 * s
    px = side / M  # frame pixels per mask pixel
    ys, xs = np.nonzero(out['mask'] > cfg.TRACK.MASK_THERSHOLD)
    assert abs(xs.min() - (x0 + 16 * px)) <= 2 and abs(xs.max() + 1 - (x0 + 48 * px)) <= 2
    assert abs(ys.min() - (y0 + 8 * px)) <= 2 and abs(ys.max() + 1 - (y0 + 40 * px)) <= 2
    poly = np.array(out['polygon']).reshape(4, 2)
    assert abs(poly[:, 0].min() - (x0 + 16 * px)) <= 2 and abs(poly[:, 1].max() - (y0 + 40 * px)) <= 2


def test_mask_tracker_without_refine_runs_the_real_network():
    cfg = load_config('configs/siammask_r50_l3.yaml', overrides=['REFINE.REFINE=False'])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.has_mask and not model.has_refine and not hasattr(model, 'refine_head')
    tracker = build_tracker(cfg, model)
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (200, 200))
    tracker.init(img, (80, 80, 40, 40))
    out = tracker.track(img)
    assert out['mask'].shape == (200, 200) and len(out['polygon']) == 8
