"""SiamMask through the batched engine: every object of every sequence in one search forward and
one refine forward (a score-map position per target), against the sequential tracker (one object
at a time, frame by frame) with a real random-weight SiamMask R50 scaled down (`small_siammask`:
a 175-pixel search, one block per ResNet stage), with and without the refine head."""
import numpy as np
import pytest
import torch

from track.engine import EngineOptions, Job, run_batched
from track.protocol import run_sequential
from track.tracker import build_tracker
from track.vos.datasets import first_frame_objects, load_davis
from track.vos.protocol import VOSProtocol
from vos_fixtures import small_siammask, tiny_davis

BOX_TOL = 1e-3   # px
MASK_TOL = 1e-4  # probability


@pytest.fixture(scope='module')
def davis(tmp_path_factory):
    return load_davis(tiny_davis(tmp_path_factory.mktemp('davis'), frames=3), '2017/val')  # 1 + 3 objects


def siammask(refine: bool, seed: int = 0):
    cfg, model = small_siammask([f'REFINE.REFINE={refine}'], seed)
    return build_tracker(cfg, model)


class Recorder:
    """The per-frame boxes-as-masks and masks of one object, and the tracker's raw results."""

    def __init__(self):
        self.masks, self.boxes = {}, {}

    def outputs(self):
        return [('mask', lambda t, m: self.masks.__setitem__(t, m)),
                ('box', lambda t, m: self.boxes.__setitem__(t, m))]


def assert_same_box_mask(got, want):
    """Filled boxes: equal, but for one row or column where an edge a rounding away from a pixel
    centre lands on the other side of it."""
    assert np.count_nonzero(got != want) <= max(want.shape), np.count_nonzero(got != want)


def jobs_of(sequences):
    out = []
    for seq in sequences:
        first = seq.labels(0)
        for k in first_frame_objects(first):
            rec = Recorder()
            out.append((rec, Job(VOSProtocol(f'{seq.name}_{k}', len(seq), first == k, rec.outputs()),
                                 seq.read_frame, source=seq.name, frames=len(seq))))
    return out


def run(tracker, sequences, options):
    jobs = jobs_of(sequences)
    if options is None:
        for _, job in jobs:
            run_sequential(job.protocol, tracker, job.read_frame)
    else:
        run_batched([job for _, job in jobs], tracker, options)
    return [rec for rec, _ in jobs]


@pytest.mark.parametrize('refine, options', [
    (True, EngineOptions(batch_size=3, streams=1)),
    (False, EngineOptions(batch_size=2, streams=2)),
])
def test_batched_siammask_matches_the_sequential_tracker(davis, refine, options):
    tracker = siammask(refine)
    want = run(tracker, davis, None)
    got = run(tracker, davis, options)
    assert len(want) == 4
    for w, g in zip(want, got):
        assert sorted(w.masks) == sorted(g.masks) == list(range(1, len(w.masks) + 1))
        for t in w.masks:
            np.testing.assert_allclose(g.masks[t], w.masks[t], rtol=0, atol=MASK_TOL)
            assert_same_box_mask(g.boxes[t], w.boxes[t])
    # the targets' masks differ: each was cut at its own score-map position and pasted at its own place
    firsts = [w.masks[1] for w in want]
    assert not any(np.allclose(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])
    assert max(m.max() for m in firsts) > 0.1


def test_batched_siammask_boxes_and_polygons_match(davis):
    """The tracker's own results (boxes, scores, polygons) for the objects of one step."""
    tracker = siammask(True, seed=1)
    seq = max(davis, key=lambda s: s.object_count())
    first = seq.labels(0)
    objects = first_frame_objects(first)
    boxes = [VOSProtocol('x', 2, first == k, []).box for k in objects]
    imgs = [seq.read_frame(0), seq.read_frame(1)]
    singles = []
    for box in boxes:
        tracker.init(imgs[0], box)
        singles.append(tracker.track(imgs[1]))
    states = [tracker.new_state() for _ in boxes]
    tracker.init_batch(states, [imgs[0]] * len(boxes), boxes)
    batched = tracker.track_batch(states, [imgs[1]] * len(boxes))
    for s, b in zip(singles, batched):
        np.testing.assert_allclose(b['bbox'], s['bbox'], rtol=0, atol=BOX_TOL)
        assert b['best_score'] == pytest.approx(s['best_score'], abs=1e-4)
        np.testing.assert_allclose(b['mask'], s['mask'], rtol=0, atol=MASK_TOL)
        np.testing.assert_allclose(b['polygon'], s['polygon'], rtol=0, atol=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_batched_siammask_on_cuda_matches_the_sequential_tracker(davis):
    """The CUDA path: one lane, batch 64; TF32 off so that only the batching rounds differently."""
    cfg, model = small_siammask(['REFINE.REFINE=True'])
    tracker = build_tracker(cfg, model.cuda(), 'cuda')
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            want = run(tracker, davis, None)
            got = run(tracker, davis, EngineOptions())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    for w, g in zip(want, got):
        for t in w.masks:
            np.testing.assert_allclose(g.masks[t], w.masks[t], rtol=0, atol=MASK_TOL)
            assert_same_box_mask(g.boxes[t], w.boxes[t])
