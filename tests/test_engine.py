"""The batched engine (track/engine.py) against the sequential tracker: same boxes and scores on
synthetic sequences with real networks (demo, AlexNet, R50; random weights), per-job settings,
the long-term tracker's two search sizes in one step, a re-initialising protocol, unreadable
frames, shared templates and errors."""
import threading

import numpy as np
import pytest
import torch

from model import build_model
from pipeline.synthetic import make_eval
from track.engine import BlockedBackbone, EngineOptions, Job, inference_model, run_batched
from track.metrics import fps
from track.protocol import OnePassProtocol, Protocol, Request, run_sequential
from track.datasets import Sequence, load_sequences
from track.ope import run_tracker
from track.tracker import StaticTracker, build_tracker
from train.config import load_config

BOX_TOL = 1e-3    # px
SCORE_TOL = 1e-4


@pytest.fixture(scope='module')
def sequences(tmp_path_factory):
    """Three synthetic sequences of different lengths (6, 4, 5 frames)."""
    root = tmp_path_factory.mktemp('synth')
    make_eval(root, videos=3, frames=6, seed=11)
    seqs = load_sequences(root, 'otb')
    return [Sequence(s.name, s.frames[:n], s.groundtruth[:n]) for s, n in zip(seqs, (6, 4, 5))]


def random_tracker(cfg_path, overrides=(), seed=0):
    cfg = load_config(cfg_path, overrides=list(overrides))
    torch.manual_seed(seed)
    return cfg, build_tracker(cfg, build_model(cfg))


def randomise_batchnorm_statistics(model):
    """Non-trivial running statistics (a fresh model's mean 0 / var 1 hide rounding)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)


def sequential(tracker, seqs):
    return {s.name: run_sequential(OnePassProtocol(s), tracker, s.read_frame).result() for s in seqs}


def assert_same_tracks(got, want):
    for name in want:
        np.testing.assert_allclose(got[name]['boxes'], want[name]['boxes'], rtol=0, atol=BOX_TOL, err_msg=name)
        np.testing.assert_allclose(got[name]['scores'], want[name]['scores'], rtol=0, atol=SCORE_TOL, err_msg=name)


@pytest.mark.parametrize('cfg_path, n_seqs, frames, options', [
    ('configs/demo_cpu.yaml', 3, None, EngineOptions(batch_size=2, streams=2)),
    ('configs/demo_cpu.yaml', 2, 3, EngineOptions.fast(batch_size=2, streams=1)),
    ('configs/demo_cpu.yaml', 2, 3, EngineOptions(batch_size=2, streams=1, blocked=False)),
    ('configs/siamrpn_alex_dwxcorr.yaml', 2, 4, EngineOptions(batch_size=2, streams=1)),
    ('configs/siamrpn_r50_l234_dwxcorr.yaml', 2, 2, EngineOptions(batch_size=2, streams=1)),
])
def test_batched_engine_matches_the_sequential_tracker(sequences, cfg_path, n_seqs, frames, options):
    seqs = [Sequence(s.name, s.frames[:frames], s.groundtruth[:frames]) for s in sequences[:n_seqs]]
    _, tracker = random_tracker(cfg_path)
    want = sequential(tracker, seqs)
    got = run_tracker(tracker, seqs, 'batched', progress=False, engine=options)
    assert_same_tracks(got, want)
    moved = [np.abs(np.diff(r['boxes'], axis=0)).max() for r in want.values()]
    assert max(moved) > 1.0  # the tracks move: the comparison is not between two still boxes


def test_per_job_settings_and_both_long_term_search_sizes_in_one_step(sequences):
    cfg, tracker = random_tracker('configs/demo_cpu.yaml', ['TRACK.TYPE=SiamRPNLTTracker',
                                                           'TRACK.LOST_INSTANCE_SIZE=351'])
    # CONFIDENCE_LOW 0: never lost; 1.0: lost after the first search (wide crop from then on)
    settings = {'kept': ['TRACK.CONFIDENCE_LOW=0.0', 'TRACK.PENALTY_K=0.3'],
                'lost': ['TRACK.CONFIDENCE_LOW=1.0', 'TRACK.CONFIDENCE_HIGH=1.0']}
    seqs = sequences[:2]
    jobs, want = [], {}
    for key, overrides in settings.items():
        variant = cfg.replace(overrides)
        torch.manual_seed(0)
        reference = build_tracker(variant, tracker.model)
        for seq in seqs:
            want[(key, seq.name)] = run_sequential(OnePassProtocol(seq), reference, seq.read_frame).result()
            jobs.append(Job(OnePassProtocol(seq), seq.read_frame, seq.name, variant.TRACK, len(seq)))
    protocols = run_batched(jobs, tracker, EngineOptions(batch_size=4, streams=1))
    got = {(key, p.sequence.name): p.result() for key, p in zip([k for k in settings for _ in seqs], protocols)}
    assert_same_tracks(got, want)
    lost = got[('lost', seqs[0].name)]['boxes']
    np.testing.assert_allclose(lost[2:], np.repeat(lost[1:2], len(lost) - 2, axis=0))  # a lost target stays put
    assert np.abs(np.diff(got[('kept', seqs[0].name)]['boxes'][1:], axis=0)).max() > 0.5


class ResetProtocol(Protocol):
    """VOT-like: initialise at frame 0, track to `stop`, skip two frames, re-initialise on the
    ground truth, track to the end; records every request it was served."""

    def __init__(self, seq, stop):
        self.seq, self.stop, self.served, self.boxes, self._next = seq, stop, [], {}, 0

    def next_request(self):
        i = self._next
        if i >= len(self.seq):
            return None
        if i in (0, self.stop + 3):
            return Request('init', i, tuple(self.seq.groundtruth[i]))
        return Request('track', i)

    def report(self, request, result):
        self.served.append((request.kind, request.frame))
        if result is not None:
            self.boxes[request.frame] = result['bbox']
        self._next = request.frame + (3 if request.frame == self.stop else 1)


def test_a_reinitialising_protocol_runs_on_the_engine_unchanged(sequences):
    _, tracker = random_tracker('configs/demo_cpu.yaml')
    runs = {}
    for mode in ('sequential', 'batched'):
        protocols = [ResetProtocol(s, stop) for s, stop in zip(sequences, (2, 0, 1))]
        if mode == 'sequential':
            for p in protocols:
                run_sequential(p, tracker, p.seq.read_frame)
        else:
            run_batched([Job(p, p.seq.read_frame, p.seq.name) for p in protocols], tracker,
                        EngineOptions(batch_size=3, streams=1))
        runs[mode] = protocols
    for seq_p, bat_p in zip(runs['sequential'], runs['batched']):
        assert bat_p.served == seq_p.served
        assert ('init', seq_p.stop + 3) in bat_p.served and ('track', seq_p.stop + 1) not in bat_p.served
        for frame, box in seq_p.boxes.items():
            np.testing.assert_allclose(bat_p.boxes[frame], box, atol=BOX_TOL)


def test_unreadable_frames_repeat_the_previous_box_and_a_bad_first_frame_names_the_sequence(sequences, tmp_path):
    seq = sequences[1]
    frames = list(seq.frames)
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    frames[2] = broken
    _, tracker = random_tracker('configs/demo_cpu.yaml')
    damaged = Sequence('damaged', frames, seq.groundtruth)
    res = run_tracker(tracker, [damaged, sequences[0]], 'x', progress=False, engine=EngineOptions(batch_size=2))
    assert res['damaged']['skipped'] == 1 and res[sequences[0].name]['skipped'] == 0
    np.testing.assert_array_equal(res['damaged']['boxes'][2], res['damaged']['boxes'][1])
    assert np.isnan(res['damaged']['scores'][2]) and not np.isnan(res['damaged']['scores'][3])
    first = Sequence('firstbad', [broken] + frames[1:], seq.groundtruth)
    for trk in (tracker, StaticTracker()):
        with pytest.raises(ValueError, match="cannot read the first frame of 'firstbad'"):
            run_tracker(trk, [first], 'x', progress=False)


def test_each_frame_is_charged_its_share_of_the_step(sequences):
    """A step that serves k frames charges each 1/k of its time (clock: a fake one, one second
    per reading); the times add up to the steps, and the fps is the frames over the steps."""
    _, tracker = random_tracker('configs/demo_cpu.yaml')
    readings = []

    def clock():
        readings.append(None)
        return float(len(readings))

    jobs = [Job(OnePassProtocol(s), s.read_frame, s.name) for s in sequences]  # 6, 4 and 5 frames
    results = [p.result() for p in run_batched(jobs, tracker, EngineOptions(batch_size=3, streams=1), clock=clock)]
    # steps 1-4 serve all three sequences, step 5 two, step 6 one
    assert len(readings) == 2 * 6
    want = {6: [1 / 3] * 4 + [1 / 2, 1.0], 4: [1 / 3] * 4, 5: [1 / 3] * 4 + [1 / 2]}
    for r in results:
        np.testing.assert_allclose(r['times'], want[len(r['times'])])
    assert fps({s.name: r for s, r in zip(sequences, results)}) == pytest.approx(15 / 6)


def test_equal_first_boxes_of_one_frame_share_a_template(sequences):
    cfg, tracker = random_tracker('configs/demo_cpu.yaml')
    import cv2
    img = cv2.imread(str(sequences[0].frames[0]))
    other = img.copy()
    box = tuple(sequences[0].groundtruth[0])
    states = [tracker.new_state(), tracker.new_state(cfg.replace(['TRACK.LR=0.1']).TRACK),
              tracker.new_state(), tracker.new_state(cfg.replace(['TRACK.CONTEXT_AMOUNT=0.6']).TRACK)]
    tracker.init_batch(states, [img, img, other, img], [box] * 4)
    ptr = [s.kernel.data_ptr() for s in states]
    assert ptr[0] == ptr[1]                      # same frame, box and template geometry
    assert len({ptr[0], ptr[2], ptr[3]}) == 3    # another frame object; another context amount
    torch.testing.assert_close(states[0].kernel, states[2].kernel, rtol=1e-4, atol=1e-4)


def test_streams_share_the_jobs_evenly(sequences):
    """Fewer jobs than one stream's batch: every stream still gets its share (8 jobs on 2
    streams once ran as 8 + 0, the busy stream on half the torch threads); here 3 jobs: 2 + 1."""
    _, tracker = random_tracker('configs/demo_cpu.yaml')
    lanes = []
    jobs = [Job(OnePassProtocol(s), s.read_frame, s.name) for s in sequences]
    run_batched(jobs, tracker, EngineOptions(batch_size=16, streams=2),
                on_done=lambda job: lanes.append(threading.current_thread().name))
    assert sorted(lanes) in (['track-lane0'] * 2 + ['track-lane1'], ['track-lane0'] + ['track-lane1'] * 2)


class FailingProtocol(OnePassProtocol):
    def report(self, request, result):
        if request.frame == 3:
            raise RuntimeError(f'protocol of {self.sequence.name} fails at frame 3')
        super().report(request, result)


def test_an_error_in_a_protocol_stops_the_engine_and_reaches_the_caller(sequences):
    _, tracker = random_tracker('configs/demo_cpu.yaml')
    jobs = [Job(OnePassProtocol(s), s.read_frame, s.name) for s in sequences[:2]]
    jobs.append(Job(FailingProtocol(sequences[2]), sequences[2].read_frame, sequences[2].name))
    with pytest.raises(RuntimeError, match='fails at frame 3'):
        run_batched(jobs, tracker, EngineOptions(batch_size=1, streams=2))


def test_inference_model_folds_batchnorm_into_a_copy():
    cfg = load_config('configs/demo_cpu.yaml')
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_batchnorm_statistics(model)
    fused = inference_model(model)
    bn = lambda net: sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert bn(fused) == 0 and bn(model) > 0
    x = torch.rand(2, 3, 127, 127) * 255
    with torch.no_grad():
        torch.testing.assert_close(fused.backbone(x), model.backbone(x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('cfg_path, size, blocks', [
    ('configs/demo_cpu.yaml', 127, True),
    ('configs/siamrpn_r50_l234_dwxcorr.yaml', 127, True),         # three levels: a list out
    ('configs/siamrpn_mobilev2_l234_dwxcorr.yaml', 127, False),   # ReLU6 has no blocked kernel
])
def test_blocked_backbone_gives_the_plain_features_or_is_not_used(cfg_path, size, blocks):
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_batchnorm_statistics(model)
    copy = inference_model(model, fuse_bn=False, blocked=True)
    assert isinstance(copy.backbone, BlockedBackbone) == blocks
    assert not isinstance(model.backbone, BlockedBackbone)  # the original is untouched
    x = torch.rand(2, 3, size, size) * 255
    with torch.no_grad():
        got, want = copy.backbone(x), model.backbone(x)
    got, want = (got, want) if isinstance(want, list) else ([got], [want])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.layout == torch.strided and g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-5 * float(w.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_batched_engine_on_cuda_matches_the_sequential_tracker(sequences):
    torch.backends.cudnn.allow_tf32 = False  # TF32 rounding would differ between batch sizes
    try:
        cfg = load_config('configs/siamrpn_r50_l234_dwxcorr.yaml')
        torch.manual_seed(0)
        tracker = build_tracker(cfg, build_model(cfg).cuda())
        want = sequential(tracker, sequences)
        got = run_tracker(tracker, sequences, 'cuda', progress=False, engine=EngineOptions(batch_size=2))
        assert_same_tracks(got, want)
    finally:
        torch.backends.cudnn.allow_tf32 = True
