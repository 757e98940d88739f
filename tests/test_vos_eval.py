"""DAVIS semi-supervised evaluation: indexed PNGs, the dataset reader, the protocol's start box and
box masks, the score merger and its layout, scoring stored results, and tools/eval_vos.py end to
end with a SiamMask checkpoint in our training format (which tools/eval_vot.py also tracks with,
polygons in its results)."""
import json
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from model import build_model
from track.engine import EngineOptions
from track.protocol import Request
from track.vos.datasets import first_frame_objects, load_davis, parse_split
from track.vos.experiment import MEASURES, evaluate_vos, score_stored
from track.vos.png import DAVIS_PALETTE, read_labels, write_labels
from track.vos.protocol import VOSProtocol, box_mask, mask_box
from track.vos.results import MaskMerger, read_result_frames
from track.tracker import StaticTracker, build_tracker
from train.config import load_config
from vos_fixtures import small_siammask, tiny_davis
from vot_synthetic import write_dataset


@pytest.fixture(scope='module')
def davis_root(tmp_path_factory):
    return tiny_davis(tmp_path_factory.mktemp('davis'))  # val: bear-walk (1 object), camel-run (3)


@pytest.fixture(scope='module')
def davis3(tmp_path_factory):
    """The same sequences cut to 3 frames (2 tracked), for the runs with networks."""
    return tiny_davis(tmp_path_factory.mktemp('davis3'), frames=3)


# --- indexed PNGs ----------------------------------------------------------------------------------

def test_palette_pngs_read_back_as_written_and_as_pil_reads_them(tmp_path):
    labels = np.random.default_rng(0).integers(0, 6, (7, 11)).astype(np.uint8)
    labels[0, 0] = 255
    path = write_labels(tmp_path / 'a.png', labels)
    np.testing.assert_array_equal(read_labels(path), labels)
    with Image.open(path) as img:  # the official reader: np.array(Image.open(path))
        assert img.mode == 'P'
        np.testing.assert_array_equal(np.array(img), labels)
        palette = np.array(img.getpalette()[:9]).reshape(3, 3)
    np.testing.assert_array_equal(palette, [[0, 0, 0], [128, 0, 0], [0, 128, 0]])  # DAVIS's colours
    np.testing.assert_array_equal(DAVIS_PALETTE[3:5], [[128, 128, 0], [0, 0, 128]])
    cv2.imwrite(str(tmp_path / 'gray.png'), labels)  # 8-bit grayscale: the values are the ids
    np.testing.assert_array_equal(read_labels(tmp_path / 'gray.png'), labels)


def test_colour_and_broken_pngs_are_named(tmp_path):
    cv2.imwrite(str(tmp_path / 'rgb.png'), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r'rgb.png: a RGB image, not a palette PNG of object ids'):
        read_labels(tmp_path / 'rgb.png')
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    with pytest.raises(ValueError, match=r'bad.png: cannot decode'):
        read_labels(tmp_path / 'bad.png')


# --- the dataset ---------------------------------------------------------------------------------

def test_davis_reader_splits_void_and_objects(davis_root):
    seqs = load_davis(davis_root, '2017/val')
    assert [s.name for s in seqs] == ['bear-walk', 'camel-run'] and [len(s) for s in seqs] == [5, 5]
    camel = seqs[1]
    assert camel.frame_ids == camel.mask_ids == ['00000', '00001', '00002', '00003', '00004'] and camel.has_full_gt
    raw = read_labels(camel.annotations[0])
    assert (raw == 255).any()  # the data set has void pixels ...
    labels = camel.labels(0)
    assert not (labels == 255).any() and (labels[raw == 255] == 0).all()  # ... read as background
    assert camel.object_count() == 3 and first_frame_objects(labels) == [1, 2, 3]
    assert set(np.unique(camel.labels(2))) <= {0, 1, 2, 3}
    assert first_frame_objects(np.array([[0, 3], [1, 0]], np.uint8)) == [1, 3]  # id 2: scored, never tracked
    # DAVIS 2016: one object, every labelled pixel (void included, as DAVIS 2016's 0/255 masks)
    assert [s.name for s in load_davis(davis_root, '2016/val')] == ['bear-walk']
    (davis_root / 'ImageSets' / '2016' / 'val.txt').write_text('bear-walk\ncamel-run\n')
    camel16 = load_davis(davis_root, '2016/val', sequences=['camel-run'])[0]
    assert camel16.single_object and camel16.object_count() == 1
    np.testing.assert_array_equal(camel16.labels(0), raw > 0)


def test_davis_reader_errors_and_the_2016_release_listing(tmp_path, davis_root):
    with pytest.raises(ValueError, match="split '2017': expected YEAR/SUBSET"):
        parse_split('2017')
    with pytest.raises(FileNotFoundError, match=r'ImageSets/2017/test-dev.txt not found'):
        load_davis(davis_root, '2017/test-dev')
    with pytest.raises(ValueError, match=r"sequences \['nope'\] are not in split 2017/val"):
        load_davis(davis_root, '2017/val', sequences=['nope'])
    broken = tiny_davis(tmp_path / 'broken', broken=True)  # boat-drift: a corrupt and a missing PNG
    with pytest.raises(ValueError, match=r'Annotations/480p/boat-drift: no mask for frame\(s\) 00003'):
        load_davis(broken, '2017/train')
    (broken / 'Annotations' / '480p' / 'boat-drift' / '00003.png').write_bytes(b'')  # present, unreadable
    (boat,) = load_davis(broken, '2016/train')
    with pytest.raises(ValueError, match=r'boat-drift/00001.png: cannot decode'):
        boat.labels(1)
    # DAVIS 2016's own release lists image and mask paths
    (broken / 'ImageSets' / '2016' / 'val.txt').unlink()
    legacy = broken / 'ImageSets' / '480p' / 'val.txt'
    legacy.parent.mkdir(parents=True)
    legacy.write_text(''.join(f'/JPEGImages/480p/bear-walk/{i:05d}.jpg /Annotations/480p/bear-walk/{i:05d}.png\n'
                              for i in range(5)))
    assert [s.name for s in load_davis(broken, '2016/val')] == ['bear-walk']
    masks = broken / 'Annotations' / '480p' / 'bear-walk'
    for png in sorted(masks.glob('*.png'))[1:]:
        png.unlink()  # as a test-dev sequence: only the first mask
    (seq,) = load_davis(broken, '2016/val')
    assert not seq.has_full_gt
    (masks / '00000.png').rename(masks / '00001.png')
    with pytest.raises(ValueError, match=r"00001.png: the first mask is not the first frame's \(00000.jpg\)"):
        load_davis(broken, '2016/val')


# --- the protocol ----------------------------------------------------------------------------------

def test_start_box_is_the_authors_and_box_masks_fill_the_box():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True  # rows 2..4, columns 3..6: boundingRect (3, 2, 4, 3)
    box = mask_box(mask)
    assert box == (3.5, 2.5, 4.0, 3.0)
    # PySOT's centre x + (w - 1)/2 of that box is the authors' x + w/2 of the rectangle
    assert box[0] + (box[2] - 1) / 2 == 3 + 4 / 2
    # the tracker reports [cx - w/2, cy - h/2, w, h] = the rectangle: its mask is the object's
    np.testing.assert_array_equal(box_mask((3, 2, 4, 3), mask.shape) > 0, mask)
    np.testing.assert_array_equal(box_mask(box, mask.shape) > 0, mask)  # and so is the start box's
    assert box_mask((-5, -5, 7.4, 8), (4, 4)).sum() == 2 * 3  # clipped: columns 0..1 (centres < 2.4), rows 0..2
    assert box_mask((float('nan'), 0, 3, 3), (4, 4)).sum() == 0
    with pytest.raises(ValueError, match='empty first-frame mask'):
        mask_box(np.zeros((4, 4), bool))


def test_protocol_requests_and_unreadable_frames():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    got = {}
    p = VOSProtocol('s_1', 4, mask, [('mask', lambda t, m: got.__setitem__(('m', t), m)),
                                     ('box', lambda t, m: got.__setitem__(('b', t), m))])
    assert p.next_request() == Request('init', 0, (2.5, 2.5, 4.0, 4.0))
    p.report(p.next_request(), None)
    req = p.next_request()
    prob = np.full((8, 8), 0.25, np.float32)
    p.report(req, {'bbox': [0, 0, 2, 2], 'mask': prob})
    assert got[('m', 1)] is not None and np.array_equal(got[('m', 1)], prob)
    assert got[('b', 1)].sum() == 4  # the box as a mask, from the same result
    p.unreadable(p.next_request())  # frame 2: the previous maps again
    assert np.array_equal(got[('m', 2)], prob) and p.skipped == 1
    p.report(p.next_request(), {'bbox': [4, 4, 2, 2]})  # no mask (a box tracker): the box
    assert got[('m', 3)].sum() == 4 and p.next_request() is None
    first = VOSProtocol('s_1', 3, mask, [])
    with pytest.raises(ValueError, match='s_1: cannot read the first frame'):
        first.unreadable(first.next_request())


# --- the merger and the layout ---------------------------------------------------------------------

def test_merger_by_score_with_ties_threshold_and_threads(tmp_path):
    first = np.array([[0, 2], [5, 0]], np.uint8)
    folder = tmp_path / 'trk' / 'seq'
    merger = MaskMerger(folder, ['00000', '00001', '00002'], first, [2, 5], threshold=0.3)
    assert (tmp_path / 'trk' / 'seq.partial' / '00000.png').is_file() and not folder.exists()
    a = np.array([[0.9, 0.5], [0.2, 0.6]], np.float32)   # object 2
    b = np.array([[0.95, 0.5], [0.25, 0.1]], np.float32)  # object 5
    # frame 2 before frame 1, object 5 before object 2, from other threads
    threads = [threading.Thread(target=merger.add, args=args) for args in
               [(1, 2, b), (0, 2, a), (1, 1, np.zeros((2, 2), np.float32))]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not merger.done and not folder.exists()
    merger.add(0, 1, a)
    assert merger.done and folder.is_dir() and not (tmp_path / 'trk' / 'seq.partial').exists()
    np.testing.assert_array_equal(read_labels(folder / '00000.png'), first)
    np.testing.assert_array_equal(read_labels(folder / '00001.png'), [[2, 2], [0, 2]])
    # 0.95 > 0.9: object 5; 0.5 == 0.5: the lower index (object 2); 0.25 <= 0.3: background
    np.testing.assert_array_equal(read_labels(folder / '00002.png'), [[5, 2], [0, 2]])
    np.testing.assert_array_equal(read_result_frames(folder, ['00002'], (2, 2))[0], [[5, 2], [0, 2]])
    with pytest.raises(ValueError, match=r'00001.png: 2x2 result for a 3x2 sequence'):
        read_result_frames(folder, ['00001'], (2, 3))
    with pytest.raises(FileNotFoundError, match=r'result missing: .*00009.png'):
        read_result_frames(folder, ['00009'], (2, 2))


# --- scoring stored results --------------------------------------------------------------------------

def copy_as_results(seqs, folder, change=None):
    for seq in seqs:
        for i, frame_id in enumerate(seq.mask_ids):
            labels = seq.labels(i)
            write_labels(folder / seq.name / f'{frame_id}.png', labels if change is None else change(seq, i, labels))


def test_stored_results_of_any_method(tmp_path, davis_root):
    seqs = load_davis(davis_root, '2017/val')
    copy_as_results(seqs, tmp_path / 'res' / 'oracle')
    # a method that loses object 2 of camel-run after frame 1 and never writes the last frame
    copy_as_results(seqs, tmp_path / 'res' / 'lossy',
                    lambda seq, i, lab: np.where((lab == 2) & (i > 1), 0, lab).astype(np.uint8))
    for seq in seqs:
        (tmp_path / 'res' / 'lossy' / seq.name / f'{seq.mask_ids[-1]}.png').unlink()  # never read
    out = score_stored(tmp_path / 'res', ['oracle', 'lossy'], seqs, davis_root, '2017/val', tmp_path / 'out',
                       progress=False, log=lambda s: None)
    oracle, lossy = out['trackers']['oracle'], out['trackers']['lossy']
    assert all(oracle['overall'][m] == (0.0 if 'Decay' in m else 1.0) for m in MEASURES)
    assert list(oracle['objects']) == ['bear-walk_1', 'camel-run_1', 'camel-run_2', 'camel-run_3']
    lost = lossy['objects']['camel-run_2']
    assert lost['J'] == [1.0, 0.0, 0.0] and lost['F'] == [1.0, 0.0, 0.0]  # frames 1..3 (not 0, not 4)
    assert lost['J-Mean'] == pytest.approx(1 / 3) and lost['J-Recall'] == pytest.approx(1 / 3)
    assert lost['J-Decay'] == pytest.approx(0.5)  # 3 frames: edges 0, 1, 1, 2, 2; mean(1, 0) - mean(0)
    assert lossy['overall']['J-Mean'] == pytest.approx((3 + 1 / 3) / 4)  # the mean over objects
    assert lossy['sequences']['camel-run']['J-Mean'] == pytest.approx((2 + 1 / 3) / 3)
    assert lossy['overall']['J&F-Mean'] == pytest.approx((lossy['overall']['J-Mean'] + lossy['overall']['F-Mean']) / 2)
    # the official tool's two tables
    glob = (tmp_path / 'out' / 'lossy' / 'global_results-val.csv').read_text().splitlines()
    assert glob[0] == 'J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay'
    assert glob[1].split(',')[:2] == ['0.833', '0.833']  # (3 + 1/3) / 4 for J and F alike
    per = (tmp_path / 'out' / 'lossy' / 'per-sequence_results-val.csv').read_text().splitlines()
    assert per == ['Sequence,J-Mean,F-Mean', 'bear-walk_1,1.000,1.000', 'camel-run_1,1.000,1.000',
                   'camel-run_2,0.333,0.333', 'camel-run_3,1.000,1.000']
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert report['split'] == '2017/val' and report['bound_th'] == 0.008
    # an id the first frame does not have
    copy_as_results(seqs, tmp_path / 'res' / 'extra', lambda seq, i, lab: np.where(lab == 1, 4, lab).astype(np.uint8))
    with pytest.raises(ValueError, match=r'extra/bear-walk: object id 4 in the result, but the first frame has 1'):
        score_stored(tmp_path / 'res', ['extra'], seqs, davis_root, '2017/val', tmp_path / 'out', progress=False)


def test_static_baseline_through_the_experiment_with_an_unreadable_frame(tmp_path):
    root = tiny_davis(tmp_path / 'davis', broken=True)  # bear-walk's frame 1 is a truncated JPEG
    (root / 'JPEGImages' / '480p' / 'bear-walk' / '00002.jpg').write_bytes(b'')  # and frame 2 unreadable
    seqs = load_davis(root, '2017/val')
    logged = []
    out = evaluate_vos({'static': StaticTracker()}, seqs, root, '2017/val', tmp_path / 'out', engine=None,
                       progress=False, log=logged.append)
    static = out['trackers']['static']
    assert 0 < static['overall']['J-Mean'] < 1 and static['fps'] is None and static['skipped'] == 1
    assert 'static: 1 unreadable object-frame(s): the previous mask repeated' in logged
    # every frame's result is the first boxes as masks, the lower id winning where they overlap
    camel = seqs[1]
    first = camel.labels(0)
    want = np.zeros_like(first)
    for k in (3, 2, 1):
        x, y, w, h = cv2.boundingRect((first == k).astype(np.uint8))
        want[y:y + h, x:x + w] = k
    for frame_id in camel.frame_ids[1:]:
        np.testing.assert_array_equal(read_labels(tmp_path / 'out' / 'static' / 'camel-run' / f'{frame_id}.png'), want)
    bear = read_labels(tmp_path / 'out' / 'static' / 'bear-walk' / '00002.png')  # the previous mask again
    np.testing.assert_array_equal(bear, read_labels(tmp_path / 'out' / 'static' / 'bear-walk' / '00001.png'))
    assert bear.any()


# --- the tool end to end ---------------------------------------------------------------------------

def eval_vos_main():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location('eval_vos', Path(__file__).resolve().parents[1] / 'tools' / 'eval_vos.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def our_checkpoint(path, overrides=()):
    """A SiamMask checkpoint as train/run.py writes it (state dict + the config it trained with)."""
    cfg = load_config('configs/siammask_r50_l3.yaml', overrides=['TRACK.INSTANCE_SIZE=175', *overrides])
    torch.manual_seed(0)
    torch.save({'epoch': 1, 'state_dict': build_model(cfg).state_dict(), 'config': cfg.to_dict()}, path)
    return path


def test_eval_vos_tool_with_a_trained_checkpoint(tmp_path, davis3, capsys):
    ckpt = our_checkpoint(tmp_path / 'checkpoint_e1.pth')
    out = tmp_path / 'vos'
    main = eval_vos_main()
    main(['--snapshot', str(ckpt), '--baselines', 'static', '--box-masks', '--dataset', str(davis3),
          '--out', str(out), '--quiet', '--sequences', 'camel-run'])
    stdout = capsys.readouterr().out
    assert f'using the config saved in {ckpt}' in stdout and 'J&F-Mean' in stdout
    report = json.loads((out / 'report.json').read_text())
    assert list(report['trackers']) == ['checkpoint_e1', 'checkpoint_e1-box', 'static']
    for name in report['trackers']:
        pngs = sorted(p.name for p in (out / name / 'camel-run').glob('*.png'))
        assert pngs == ['00000.png', '00001.png', '00002.png']
        assert (out / name / 'global_results-val.csv').is_file()
        with Image.open(out / name / 'camel-run' / '00002.png') as img:
            assert img.mode == 'P' and img.size == (96, 64)
    assert report['trackers']['checkpoint_e1']['threshold'] == load_config('configs/siammask_r50_l3.yaml').TRACK.MASK_THERSHOLD
    # the stored masks scored again (any method's results) give the same figures
    main(['--dataset', str(davis3), '--results', str(out), '--trackers', 'checkpoint_e1', 'static',
          '--out', str(tmp_path / 'rescored'), '--quiet', '--sequences', 'camel-run'])
    again = json.loads((tmp_path / 'rescored' / 'report.json').read_text())['trackers']
    for name in ('checkpoint_e1', 'static'):
        assert again[name]['overall'] == report['trackers'][name]['overall']
    # a second run keeps the stored sequences
    main(['--snapshot', str(ckpt), '--dataset', str(davis3), '--out', str(out), '--quiet', '--sequences', 'camel-run'])
    assert '1 sequence(s) kept from an earlier run' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='--results needs --trackers'):
        main(['--dataset', str(davis3), '--results', str(out)])
    with pytest.raises(SystemExit, match="error: no results for 'nope'"):
        main(['--dataset', str(davis3), '--results', str(out), '--trackers', 'nope', '--quiet'])


def test_eval_vot_tracks_polygons_with_a_trained_siammask_checkpoint(tmp_path):
    import importlib.util
    from pathlib import Path
    ckpt = our_checkpoint(tmp_path / 'checkpoint_e1.pth')
    # a target filling the frame: even a random network's region overlaps it (no failure)
    root = write_dataset(tmp_path / 'vot', {'full': dict(n=4, size=(64, 48), box=(64, 48), start=(0, 0),
                                                        velocity=(0, 0), seed=4)})
    spec = importlib.util.spec_from_file_location('eval_vot', Path(__file__).resolve().parents[1] / 'tools' / 'eval_vot.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(['--snapshot', str(ckpt), '--dataset', str(root), '--out', str(tmp_path / 'out'), '--quiet'])
    lines = (tmp_path / 'out' / 'results' / 'checkpoint_e1' / 'baseline' / 'full' / 'full_001.txt').read_text().split()
    assert lines[0] == '1' and len(lines) == 4
    assert all(len(line.split(',')) == 8 for line in lines[1:])  # SiamMask's polygons, no failure
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert 'checkpoint_e1' in report['trackers']


def test_small_siammask_through_the_experiment_batched_and_sequential_write_the_same_masks(tmp_path, davis3):
    cfg, model = small_siammask()
    tracker = build_tracker(cfg, model)
    seqs = load_davis(davis3, '2017/val')
    evaluate_vos({'m': tracker}, seqs, davis3, '2017/val', tmp_path / 'a', engine=None, progress=False,
                 log=lambda s: None)
    evaluate_vos({'m': tracker}, seqs, davis3, '2017/val', tmp_path / 'b', progress=False, log=lambda s: None,
                 engine=EngineOptions(batch_size=3, streams=1))
    differing, labelled, pixels = 0, 0, 0
    for seq in seqs:
        for frame_id in seq.frame_ids[1:]:
            a = read_labels(tmp_path / 'a' / 'm' / seq.name / f'{frame_id}.png')
            b = read_labels(tmp_path / 'b' / 'm' / seq.name / f'{frame_id}.png')
            differing += int(np.count_nonzero(a != b))
            labelled += int(np.count_nonzero(a))
            pixels += a.size
    assert labelled > 0.01 * pixels  # the tracked masks are not empty
    # float rounding of the batched convolutions may move a pixel across the threshold, no more
    assert differing <= 1e-4 * pixels
