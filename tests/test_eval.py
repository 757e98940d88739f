"""Sequence readers, result-file formats and tools/eval.py end to end on tiny written sequences."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import build_model
from train.config import load_config
from track.engine import EngineOptions
from track.results import read_results, result_file, write_results
from track.snapshots import epoch_checkpoints
from track.datasets import (OTB_FRAME_RANGES, load_otb, load_sequences, otb_benchmark_range,
                                        read_boxes)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CFG = ROOT / 'configs' / 'demo_cpu.yaml'


def write_frames(folder: Path, boxes, size=(96, 128)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (x, y, w, h) in enumerate(boxes):
        img = np.full(size + (3,), 60, np.uint8)
        img[int(y):int(y + h), int(x):int(x + w)] = (40, 200, 230)
        cv2.imwrite(str(folder / f'{i + 1:04d}.jpg'), img)


def test_read_boxes_separators_and_errors(tmp_path):
    p = tmp_path / 'gt.txt'
    p.write_text('1,2,3,4\n5\t6\t7\t8\n9 10 11 12\n\n')
    np.testing.assert_array_equal(read_boxes(p), [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    p.write_text('1,2,3\n')
    with pytest.raises(ValueError, match='gt.txt:1'):
        read_boxes(p)


def test_otb_reader(tmp_path):
    boxes = [(10, 10, 20, 20)] * 3
    write_frames(tmp_path / 'Car' / 'img', boxes)
    (tmp_path / 'Car' / 'groundtruth_rect.txt').write_text('10\t10\t20\t20\n' * 3)
    write_frames(tmp_path / 'Jogging' / 'img', boxes)  # two targets in one folder
    (tmp_path / 'Jogging' / 'groundtruth_rect.1.txt').write_text('10,10,20,20\n' * 3)
    (tmp_path / 'Jogging' / 'groundtruth_rect.2.txt').write_text('1,1,5,5\n' * 3)
    write_frames(tmp_path / 'Human4' / 'img', boxes)  # as in OTB100: target 1's file is empty
    (tmp_path / 'Human4' / 'groundtruth_rect.1.txt').write_text('\n')
    (tmp_path / 'Human4' / 'groundtruth_rect.2.txt').write_text('2,2,6,6\n' * 3)
    seqs = load_sequences(tmp_path, 'otb')
    assert [s.name for s in seqs] == ['Car', 'Human4-2', 'Jogging-1', 'Jogging-2']
    assert seqs[3].init_box == [1, 1, 5, 5] and seqs[1].init_box == [2, 2, 6, 6]
    assert seqs[2].frames == seqs[3].frames and len(seqs[0]) == 3 and seqs[0].visible is None
    (tmp_path / 'Car' / 'groundtruth_rect.txt').write_text('10,10,20,20\n' * 2)
    with pytest.raises(ValueError, match="2 boxes but 3 images for sequence 'Car' .*no OTB start/end"):
        load_sequences(tmp_path, 'otb')


def test_otb_benchmark_range_cuts_david_and_tiger1():
    # OTB100's David folder holds images 0001-0770, its 471 boxes cover 300-770 (the benchmark range)
    names = [f'{i:04d}.jpg' for i in range(1, 771)]
    gt = np.arange(471 * 4, dtype=float).reshape(471, 4)
    frames, cut = otb_benchmark_range('David', names, gt)
    assert frames == names[299:] and frames[0] == '0300.jpg' and cut is gt
    # a copy already holding only 0300-0770 is kept as it is
    assert otb_benchmark_range('David', names[299:], gt)[0] == names[299:]
    # Tiger1: 354 images and 354 boxes; the benchmark starts at image 6, so both lose 5
    names = [f'{i:04d}.jpg' for i in range(1, 355)]
    gt = np.arange(354 * 4, dtype=float).reshape(354, 4)
    frames, cut = otb_benchmark_range('Tiger1', names, gt)
    assert frames[0] == '0006.jpg' and len(frames) == len(cut) == 349
    np.testing.assert_array_equal(cut[0], gt[5])
    # names without numbers: by position
    frames, _ = otb_benchmark_range('Football1', [f'f{i}.jpg' for i in range(80)], np.zeros((74, 4)))
    assert frames == [f'f{i}.jpg' for i in range(74)]
    # not in the table: unchanged
    frames, cut = otb_benchmark_range('Car', names[:3], gt[:2])
    assert frames == names[:3] and cut is not None and len(cut) == 2
    # the default table cuts BlurCar1's 988 images to the benchmark's 247..988 (742 boxes)
    names = [f'{i:04d}.jpg' for i in range(1, 989)]
    frames, cut = otb_benchmark_range('BlurCar1', names, np.zeros((742, 4)))
    assert frames[0] == '0247.jpg' and frames[-1] == '0988.jpg' and len(frames) == len(cut) == 742
    assert OTB_FRAME_RANGES['BlurCar1'] == (247, 988)


def test_otb_reader_uses_the_start_end_table_or_names_the_mismatch(tmp_path):
    write_frames(tmp_path / 'Tiny' / 'img', [(4, 4, 8, 8)] * 6)
    (tmp_path / 'Tiny' / 'groundtruth_rect.txt').write_text('1,1,8,8\n2,2,8,8\n3,3,8,8\n')
    with pytest.raises(ValueError, match=r"groundtruth_rect.txt: 3 boxes but 6 images for sequence 'Tiny'"):
        load_otb(tmp_path)
    (seq,) = load_otb(tmp_path, ranges={'Tiny': (3, 5)})
    assert [p.name for p in seq.frames] == ['0003.jpg', '0004.jpg', '0005.jpg']
    assert seq.init_box == [1, 1, 8, 8]
    with pytest.raises(ValueError, match="3 boxes but 2 images for sequence 'Tiny'"):
        load_otb(tmp_path, ranges={'Tiny': (5, 6)})


def write_index(path, entries):
    path.write_text(json.dumps({name: dict(video_dir=name, init_rect=rects[0], img_names=imgs,
                                           gt_rect=rects, attr=[]) for name, (imgs, rects) in entries.items()}))


def test_index_json_defines_sequences(tmp_path):
    # the folder has images 1-5 and 5 boxes; the index starts the sequence at image 3
    write_frames(tmp_path / 'Seq' / 'img', [(4, 4, 8, 8)] * 5)
    (tmp_path / 'Seq' / 'groundtruth_rect.txt').write_text('4,4,8,8\n' * 5)
    (tmp_path / 'meta.json').write_text('{"version": 1}')  # not an index: ignored
    imgs = [f'Seq/img/{i:04d}.jpg' for i in (3, 4, 5)]
    rects = [[3, 3, 8, 8], [4, 4, 8, 8], [5, 5, 8, 8]]
    write_index(tmp_path / 'OTB100.json', {'Seq-b': (imgs, rects)})
    (seq,) = load_sequences(tmp_path, 'otb')
    assert seq.name == 'Seq-b' and seq.frames == [tmp_path / n for n in imgs]
    np.testing.assert_array_equal(seq.groundtruth, rects)
    # explicit index by file name in the root, for any format
    assert load_sequences(tmp_path, 'got10k', index='OTB100.json')[0].name == 'Seq-b'
    # the folder layout is used for GOT-10k/LaSOT unless an index is given
    with pytest.raises(ValueError, match='no got10k sequences'):
        load_sequences(tmp_path, 'got10k')
    write_index(tmp_path / 'other.json', {'X': (imgs, rects)})
    with pytest.raises(ValueError, match='several index JSON files'):
        load_sequences(tmp_path, 'otb')
    write_index(tmp_path / 'other.json', {'X': (imgs[:2], rects)})
    with pytest.raises(ValueError, match="video 'X': 3 boxes but 2 images"):
        load_sequences(tmp_path, 'otb', index=tmp_path / 'other.json')
    write_index(tmp_path / 'other.json', {'X': (['Seq/img/0009.jpg'], rects[:1])})
    with pytest.raises(FileNotFoundError, match="video 'X': 1 of 1 images missing"):
        load_sequences(tmp_path, 'otb', index=tmp_path / 'other.json')


def test_got10k_reader_with_absence_and_test_split(tmp_path):
    write_frames(tmp_path / 'GOT-10k_Val_000001', [(5, 5, 10, 10)] * 4)
    (tmp_path / 'GOT-10k_Val_000001' / 'groundtruth.txt').write_text('5,5,10,10\n' * 4)
    (tmp_path / 'GOT-10k_Val_000001' / 'absence.label').write_text('0\n1\n1\n0\n')
    write_frames(tmp_path / 'GOT-10k_Test_000001', [(5, 5, 10, 10)] * 3)
    (tmp_path / 'GOT-10k_Test_000001' / 'groundtruth.txt').write_text('5,5,10,10\n')
    seqs = {s.name: s for s in load_sequences(tmp_path, 'got10k')}
    np.testing.assert_array_equal(seqs['GOT-10k_Val_000001'].visible, [True, False, False, True])
    assert not seqs['GOT-10k_Test_000001'].has_full_gt


def test_lasot_reader_flags_and_nesting(tmp_path):
    d = tmp_path / 'cat' / 'cat-1'
    write_frames(d / 'img', [(5, 5, 10, 10)] * 4)
    (d / 'groundtruth.txt').write_text('5,5,10,10\n' * 4)
    (d / 'full_occlusion.txt').write_text('0,1,0,0')
    (d / 'out_of_view.txt').write_text('0,0,0,1')
    seqs = load_sequences(tmp_path, 'lasot')
    assert [s.name for s in seqs] == ['cat-1']
    np.testing.assert_array_equal(seqs[0].visible, [True, False, True, False])


def test_result_formats(tmp_path):
    boxes = np.array([[1.5, 2, 3, 4], [5, 6, 7, 8.25]])
    p = write_results(tmp_path, 'trk', 'otb', 'Car', boxes)
    assert p == tmp_path / 'trk' / 'Car.txt'
    assert p.read_text().splitlines()[0] == '1.5000,2.0000,3.0000,4.0000'
    np.testing.assert_allclose(read_results(tmp_path, 'trk', 'lasot', 'Car'), boxes)
    g = write_results(tmp_path, 'trk', 'got10k', 'GOT-10k_Val_000001', boxes, [0.01, 0.02])
    assert g == tmp_path / 'trk' / 'GOT-10k_Val_000001' / 'GOT-10k_Val_000001_001.txt'
    times = (g.parent / 'GOT-10k_Val_000001_time.txt').read_text().split()
    assert [float(t) for t in times] == [0.01, 0.02]
    assert result_file(tmp_path, 'trk', 'got10k', 'x') == tmp_path / 'trk' / 'x' / 'x_001.txt'


@pytest.fixture(scope='module')
def otb_root(tmp_path_factory):
    """Two 6-frame sequences: 'still' (target never moves), 'jump' (target leaves its first box)."""
    root = tmp_path_factory.mktemp('otb')
    still = [(40, 30, 24, 20)] * 6
    jump = [(10, 10, 24, 20)] + [(90, 60, 24, 20)] * 5
    for name, boxes in (('still', still), ('jump', jump)):
        write_frames(root / name / 'img', boxes)
        (root / name / 'groundtruth_rect.txt').write_text(
            ''.join(','.join(str(v) for v in b) + '\n' for b in boxes))
    return root


@pytest.fixture(scope='module')
def pysot_checkpoints(tmp_path_factory):
    cfg = load_config(DEMO_CFG)
    run = tmp_path_factory.mktemp('run')
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        sd = build_model(cfg).state_dict()
        torch.save({'epoch': epoch, 'state_dict': {'module.' + k: v for k, v in sd.items()}},
                   run / f'checkpoint_e{epoch}.pth')
    (run / 'latest.pth').write_bytes(b'')  # not an epoch checkpoint: must be ignored
    return run


def run_eval(*args):
    proc = subprocess.run([sys.executable, 'tools/eval.py', *map(str, args), '--quiet'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_eval_tool_end_to_end(tmp_path, otb_root, pysot_checkpoints):
    assert [p.name for p in epoch_checkpoints(pysot_checkpoints)] == ['checkpoint_e1.pth', 'checkpoint_e2.pth']
    out = tmp_path / 'eval'
    stdout = run_eval('--cfg', DEMO_CFG, '--snapshot', pysot_checkpoints / 'checkpoint_e1.pth',
                      '--checkpoints', pysot_checkpoints, '--baselines', 'static',
                      '--dataset', otb_root, '--format', 'otb', '--out', out, '--plot')
    report = json.loads((out / 'report.json').read_text())
    trackers = report['trackers']
    assert list(trackers) == ['checkpoint_e1', 'checkpoint_e2', 'static']  # e1 given twice: once
    # static baseline by hand: 'still' -> IoU 1 on all 6 frames -> AUC 20/21, precision 1;
    # 'jump' -> only frame 0 overlaps -> AUC (1/6)(20/21), precision 1/6; overall = mean
    static = trackers['static']['overall']
    assert static['auc'] == pytest.approx((20 / 21 + 20 / 21 / 6) / 2, abs=1e-6)
    assert static['precision'] == pytest.approx((1 + 1 / 6) / 2, abs=1e-6)
    assert trackers['static']['sequences']['still']['auc'] == pytest.approx(20 / 21)
    for name in trackers:
        for seq in ('still', 'jump'):
            boxes = read_boxes(out / 'results' / name / f'{seq}.txt')
            assert boxes.shape == (6, 4)
    assert (out / 'success.png').stat().st_size > 0 and (out / 'precision.png').stat().st_size > 0
    assert 'static' in stdout and 'best AUC' in stdout
    assert (out / 'report.txt').read_text().startswith('otb one-pass evaluation')


def test_eval_tool_got10k_format_and_errors(tmp_path, pysot_checkpoints):
    """GOT-10k through the command line: the static baseline on ground truth that never moves
    scores IoU 1 on every frame (AO = SR0.50 = SR0.75 = 1, success AUC 20/21: IoU > 1 is never
    true); a test-split sequence (first box only) is tracked and zipped but not scored; the
    submission zip holds each sequence's folder at its top level with the files as written."""
    root = tmp_path / 'got'
    write_frames(root / 'GOT-10k_Val_000001', [(20, 20, 30, 30)] * 3)
    (root / 'GOT-10k_Val_000001' / 'groundtruth.txt').write_text('20,20,30,30\n' * 3)
    (root / 'GOT-10k_Val_000001' / 'meta_info.ini').write_text('[METAINFO]\nresolution: (128, 96)\n')
    write_frames(root / 'GOT-10k_Val_000002', [(50, 40, 20, 24)] * 4)
    (root / 'GOT-10k_Val_000002' / 'groundtruth.txt').write_text('50,40,20,24\n' * 4)
    write_frames(root / 'GOT-10k_Test_000001', [(10, 10, 16, 16)] * 2)
    (root / 'GOT-10k_Test_000001' / 'groundtruth.txt').write_text('10,10,16,16\n')
    out = tmp_path / 'eval'
    stdout = run_eval('--baselines', 'static', '--dataset', root, '--format', 'got10k', '--out', out)
    static = json.loads((out / 'report.json').read_text())['trackers']['static']
    assert sorted(static['sequences']) == ['GOT-10k_Val_000001', 'GOT-10k_Val_000002']
    assert static['overall']['auc'] == pytest.approx(20 / 21) and static['overall']['precision'] == 1.0
    got = static['got10k']['overall']
    assert got['ao'] == pytest.approx(1.0) and got['sr50'] == 1.0 and got['sr75'] == 1.0
    assert got['frames'] == 2 + 3  # the first frame of each sequence is not scored
    assert 'AO' in stdout and 'SR.75' in stdout
    seq_dir = out / 'results' / 'static' / 'GOT-10k_Val_000001'
    assert read_boxes(seq_dir / 'GOT-10k_Val_000001_001.txt').tolist() == [[20, 20, 30, 30]] * 3
    assert len((seq_dir / 'GOT-10k_Val_000001_time.txt').read_text().split()) == 3
    with zipfile.ZipFile(out / 'results' / 'static.zip') as archive:
        names = sorted(archive.namelist())
        assert names == sorted(f'{s}/{s}_{kind}.txt' for s in ('GOT-10k_Val_000001', 'GOT-10k_Val_000002',
                                                               'GOT-10k_Test_000001') for kind in ('001', 'time'))
        for name in names:
            assert archive.read(name) == (out / 'results' / 'static' / name).read_bytes()
    assert read_boxes(out / 'results' / 'static' / 'GOT-10k_Test_000001' / 'GOT-10k_Test_000001_001.txt').shape == (2, 4)
    bad = subprocess.run([sys.executable, 'tools/eval.py', '--cfg', DEMO_CFG, '--snapshot',
                          tmp_path / 'missing.pth', '--dataset', root, '--format', 'got10k'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and 'missing.pth' in bad.stderr


def test_eval_tool_on_synthetic_eval_sequences(tmp_path, pysot_checkpoints):
    from pipeline.synthetic import make_eval
    root = tmp_path / 'synth'
    make_eval(root, videos=2, frames=6, seed=5)
    out = tmp_path / 'eval'
    run_eval('--cfg', DEMO_CFG, '--checkpoints', pysot_checkpoints, '--baselines', 'static', 'untrained',
             '--dataset', root, '--format', 'otb', '--out', out)
    report = json.loads((out / 'report.json').read_text())
    assert report['index'] == str(root / 'SYNTH.json')  # found in the root and used
    assert list(report['trackers']) == ['checkpoint_e1', 'checkpoint_e2', 'untrained', 'static']
    aucs = {name: scores['overall']['auc'] for name, scores in report['trackers'].items()}
    assert len(set(aucs.values())) > 1  # the pick is not a tie
    assert report['best'] == max(aucs, key=aucs.get)  # the highest AUC, wherever it stands
    assert f"best AUC: {report['best']} ({aucs[report['best']]:.3f})" in (out / 'report.txt').read_text()
    for scores in report['trackers'].values():
        assert set(scores['sequences']) == {'Synth01', 'Synth02'}
        assert 0.0 <= scores['overall']['auc'] <= 1.0


def test_eval_tool_reads_the_config_saved_in_our_checkpoints(tmp_path, otb_root, pysot_checkpoints):
    cfg = load_config(DEMO_CFG, overrides=['TRACK.WINDOW_INFLUENCE=0.3'])
    sd = torch.load(pysot_checkpoints / 'checkpoint_e1.pth', weights_only=True)['state_dict']
    ours = tmp_path / 'ours.pth'
    torch.save({'epoch': 1, 'state_dict': sd, 'config': cfg.to_dict()}, ours)
    out = tmp_path / 'eval'
    stdout = run_eval('--snapshot', ours, '--dataset', otb_root, '--format', 'otb', '--out', out)
    assert f'using the config saved in {ours}' in stdout
    assert list(json.loads((out / 'report.json').read_text())['trackers']) == ['ours']
    # the tracker ran with the saved WINDOW_INFLUENCE (0.3), not the demo config's 0.4
    assert json.loads((out / 'report.json').read_text())['trackers']['ours']['track']['WINDOW_INFLUENCE'] == 0.3
    eval_tool_main()(['--cfg', str(DEMO_CFG), '--snapshot', str(ours), '--dataset', str(otb_root),
                      '--out', str(tmp_path / 'given'), '--quiet'])
    given = json.loads((tmp_path / 'given' / 'report.json').read_text())['trackers']['ours']['track']
    assert given['WINDOW_INFLUENCE'] == load_config(DEMO_CFG).TRACK.WINDOW_INFLUENCE == 0.4
    # a PySOT file carries no config: a clear message asks for --cfg
    bad = subprocess.run([sys.executable, 'tools/eval.py', '--snapshot', pysot_checkpoints / 'checkpoint_e2.pth',
                          '--dataset', otb_root, '--quiet'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and 'give --cfg' in bad.stderr


def eval_tool_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location('eval_tool', ROOT / 'tools' / 'eval.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('text, line', [
    ('nan,nan,24,20\n', 1),          # used to stop with "cannot convert float NaN to integer"
    ('\n40,30,-24,20\n', 2),         # used to be accepted (AUC 0)
    ('40,30,0,0\n', 1),              # used to stop with an OpenCV assertion traceback
])
def test_eval_tool_names_the_sequence_and_line_of_a_bad_first_box(tmp_path, text, line):
    root = tmp_path / 'otb'
    write_frames(root / 'Bad' / 'img', [(40, 30, 24, 20)] * 3)
    (root / 'Bad' / 'groundtruth_rect.txt').write_text(text + '40,30,24,20\n' * 2)
    with pytest.raises(SystemExit) as exc:
        eval_tool_main()(['--cfg', str(DEMO_CFG), '--baselines', 'untrained', '--dataset', str(root),
                          '--out', str(tmp_path / 'eval'), '--quiet'])
    message = str(exc.value.code)
    assert '\n' not in message, message
    assert f'groundtruth_rect.txt:{line}' in message and "'Bad'" in message and 'first box' in message


def test_lasot_scores_absent_frames_as_misses_by_default(tmp_path):
    d = tmp_path / 'lasot' / 'cat' / 'cat-1'
    write_frames(d / 'img', [(5, 5, 10, 10)] * 4)
    (d / 'groundtruth.txt').write_text('5,5,10,10\n' * 4)
    (d / 'full_occlusion.txt').write_text('0,1,0,0')
    (d / 'out_of_view.txt').write_text('0,0,0,0')
    main = eval_tool_main()
    reports = {}
    for tag, extra in (('default', []), ('exclude', ['--absent', 'exclude'])):
        main(['--baselines', 'static', '--dataset', str(tmp_path / 'lasot'), '--format', 'lasot',
              '--out', str(tmp_path / tag), '--quiet', *extra])
        reports[tag] = json.loads((tmp_path / tag / 'report.json').read_text())
    # the static box is the ground truth on all 4 frames; frame 1 is fully occluded
    assert reports['default']['absent'] == 'miss'  # the official LaSOT toolkit's rule
    assert reports['default']['trackers']['static']['overall']['auc'] == pytest.approx(3 / 4 * 20 / 21)
    assert reports['exclude']['trackers']['static']['overall']['auc'] == pytest.approx(20 / 21)
    assert reports['default']['trackers']['static']['fps'] is None  # printed as '–'
    assert '–' in (tmp_path / 'default' / 'report.txt').read_text()


def test_the_tools_parse_their_shared_options_alike(tmp_path, pysot_checkpoints):
    """tools/eval.py, tools/eval_vot.py and tools/tune.py declare their tracker and engine options
    in one place: the same command line gives the same values in each (the engine's --streams
    included, which eval_vot once lacked), each says what to give when nothing is named, and the
    values name the same trackers."""
    sys.path.insert(0, str(ROOT))
    from tools import eval as ote, eval_vot as vot, tune

    for tool, missing in ((ote, '--checkpoints or --baselines'), (vot, '--baselines or --results')):
        with pytest.raises(SystemExit, match=f'nothing to evaluate: give --snapshot, .*{missing}'):
            tool.main(['--dataset', str(tmp_path)])
    common = ['--dataset', str(tmp_path), '--cfg', str(DEMO_CFG), '--checkpoints', str(pysot_checkpoints),
              '--snapshot', str(pysot_checkpoints / 'checkpoint_e2.pth'), '--opts', 'TRACK.LR=0.3',
              '--device', 'cpu', '--threads', '2', '--batch-size', '3', '--streams', '1', '--quiet']
    shared = ('cfg', 'opts', 'snapshot', 'checkpoints', 'device', 'threads', 'batch_size', 'streams', 'quiet')
    a = ote.parse_args(common + ['--baselines', 'static', '--sequential'])
    b = vot.parse_args(common + ['--baselines', 'static', '--sequential'])
    c = tune.parse_args(common + ['--report-set', str(tmp_path / 'other'), '--param', 'LR=0.1,0.2'])
    want = {'cfg': str(DEMO_CFG), 'opts': ['TRACK.LR=0.3'], 'snapshot': [str(pysot_checkpoints / 'checkpoint_e2.pth')],
            'checkpoints': str(pysot_checkpoints), 'device': 'cpu', 'threads': 2, 'batch_size': 3, 'streams': 1,
            'quiet': True}
    for args in (a, b, c):
        assert {k: getattr(args, k) for k in shared} == want
    assert a.baselines == b.baselines == ['static'] and a.sequential and b.sequential
    assert ote.engine_options(a) is None and ote.engine_options(c) == EngineOptions(batch_size=3, streams=1)
    b.sequential = False
    assert ote.engine_options(b) == EngineOptions(batch_size=3, streams=1)
    b.threads = 0  # leave this process's torch threads alone
    names = list(ote.trackers_to_evaluate(b, 'nothing'))
    assert names == ['checkpoint_e2', 'checkpoint_e1', 'static'], names  # e2 named first, once
