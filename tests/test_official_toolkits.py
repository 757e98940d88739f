"""Our figures against the official `got10k` package (0.1.3, run here, not transcribed) on the
same result files: GOT-10k AO / SR0.50 / SR0.75 (its `ExperimentGOT10k.report`) and OTB success /
precision (its `ExperimentOTB.report`, fed our sequences instead of its download)."""
import json
import zipfile

import cv2
import numpy as np
import pytest

from got10k.experiments import ExperimentGOT10k, ExperimentOTB  # the test extra installs got10k (setup.cfg)

from track.datasets import load_sequences
from track.ope import evaluate, score_results
from track.results import write_results
from track.snapshots import make_trackers
from train.config import load_config

TOL = 1e-6
W, H = 96, 64


def write_images(folder, n, size=(H, W)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full(size + (3,), 40 + 10 * i, np.uint8)
        cv2.rectangle(img, (20 + 3 * i, 15), (50 + 3 * i, 40), (0, 200, 255), -1)
        cv2.imwrite(str(folder / f'{i + 1:08d}.jpg'), img)


def lines(rows, fmt='{:g}'):
    return ''.join(','.join(fmt.format(v) for v in r) + '\n' for r in rows)


@pytest.fixture(scope='module')
def got10k_val(tmp_path_factory):
    """<root>/val with three sequences: boxes partly outside the image, cover 0 frames."""
    root = tmp_path_factory.mktemp('GOT-10k')
    rng = np.random.default_rng(7)
    names = [f'GOT-10k_Val_{i:06d}' for i in (1, 2, 3)]
    for k, name in enumerate(names):
        d = root / 'val' / name
        n = 6 + 2 * k
        write_images(d, n)
        gt = np.column_stack([rng.uniform(-15, W - 20, n), rng.uniform(-10, H - 15, n),
                              rng.uniform(12, 45, n), rng.uniform(10, 35, n)]).round(2)
        gt[0] = [20, 15, 30, 25]
        (d / 'groundtruth.txt').write_text(lines(gt, '{:.2f}'))
        cover = rng.integers(0, 9, n)
        cover[0] = 8
        cover[2] = 0
        (d / 'cover.label').write_text(''.join(f'{c}\n' for c in cover))
        (d / 'absence.label').write_text(''.join(f'{int(c == 0)}\n' for c in cover))
        (d / 'cut_by_image.label').write_text('0\n' * n)
        (d / 'meta_info.ini').write_text(f'[METAINFO]\nurl: none\nresolution: ({W}, {H})\n')
    (root / 'val' / 'list.txt').write_text('\n'.join(names) + '\n')
    return root


def run_got10k_toolkit(root, results_dir, name, tmp_path):
    """The official report on the results under `results_dir/<name>/` (linked where it looks)."""
    toolkit_results = tmp_path / 'toolkit_results'
    toolkit_results.mkdir(parents=True)
    (toolkit_results / 'GOT-10k').symlink_to(results_dir, target_is_directory=True)
    experiment = ExperimentGOT10k(str(root), subset='val', result_dir=str(toolkit_results),
                                  report_dir=str(tmp_path / 'toolkit_reports'))
    return experiment.report([name])[name]


def assert_same_got10k(ours, official):
    o = ours['overall']
    assert o['ao'] == pytest.approx(official['overall']['ao'], abs=TOL)
    assert o['sr50'] == pytest.approx(official['overall']['sr'], abs=TOL)
    assert o['sr75'] == pytest.approx(official['overall']['succ_curve'][75], abs=TOL)
    for seq, theirs in official['seq_wise'].items():
        assert ours['sequences'][seq]['ao'] == pytest.approx(theirs['ao'], abs=TOL), seq
        assert ours['sequences'][seq]['sr50'] == pytest.approx(theirs['sr'], abs=TOL), seq


def test_got10k_ao_and_sr_equal_the_official_toolkit_on_the_same_files(got10k_val, tmp_path):
    seqs = load_sequences(got10k_val / 'val', 'got10k')
    rng = np.random.default_rng(3)
    results = tmp_path / 'results'
    for seq in seqs:
        n = len(seq)
        pred = seq.groundtruth + rng.normal(0, 2, (n, 4))       # near the target, often outside the image
        pred[1, 2:] = 0                                 # a zero-size prediction
        pred[3] = [W + 5, H + 5, 10, 10]                # entirely outside: clipped to nothing
        pred[-1] = [-40, -30, 200, 150]                 # covers the whole image
        write_results(results, 'noisy', 'got10k', seq.name, pred, np.full(n, 0.01))
    ours = score_results(seqs, results, 'noisy', 'got10k')['got10k']
    official = run_got10k_toolkit(got10k_val, results, 'noisy', tmp_path)
    assert_same_got10k(ours, official)
    # the conventions matter here: the same boxes without clipping / with the first frame give other figures
    assert 0.05 < ours['overall']['ao'] < 0.95 and 0 < ours['overall']['sr75'] < ours['overall']['sr50'] < 1


def test_eval_on_got10k_writes_what_the_official_toolkit_scores_the_same(got10k_val, tmp_path):
    cfg = load_config('configs/demo_cpu.yaml')
    trackers = make_trackers(cfg, baselines=('untrained', 'static'))
    out = tmp_path / 'eval'
    report = evaluate(trackers, got10k_val / 'val', 'got10k', out, progress=False, log=lambda *a: None)
    saved = json.loads((out / 'report.json').read_text())
    for name in trackers:
        official = run_got10k_toolkit(got10k_val, out / 'results', name, tmp_path / name)
        assert_same_got10k(report['trackers'][name]['got10k'], official)
        assert saved['trackers'][name]['got10k']['overall']['ao'] == pytest.approx(official['overall']['ao'], abs=TOL)
        with zipfile.ZipFile(out / 'results' / f'{name}.zip') as archive:  # the server's submission layout
            assert sorted(archive.namelist()) == sorted(
                f'{s}/{s}_{kind}.txt' for s in official['seq_wise'] for kind in ('001', 'time'))
    assert 'AO' in report['table'] and 'SR.75' in report['table']


class OurOTB:
    """What ExperimentOTB iterates (its OTB class downloads the benchmark): names and (frames, gt)."""

    def __init__(self, seqs):
        self.seqs, self.seq_names = seqs, [s.name for s in seqs]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return [str(f) for f in self.seqs[i].frames], np.array(self.seqs[i].groundtruth)


def test_otb_success_and_precision_equal_the_official_toolkit_on_the_same_files(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / 'otb'
    for k in range(3):
        n = 7 + k
        write_images(root / f'Seq{k}' / 'img', n)
        gt = np.column_stack([rng.uniform(0, 60, n), rng.uniform(0, 40, n),
                              rng.uniform(8, 30, n), rng.uniform(8, 20, n)]).round(1)
        (root / f'Seq{k}' / 'groundtruth_rect.txt').write_text(lines(gt))
    seqs = load_sequences(root, 'otb')
    results = tmp_path / 'results'
    for seq in seqs:
        pred = seq.groundtruth + rng.normal(0, 8, seq.groundtruth.shape)
        pred[0] = seq.groundtruth[0]
        write_results(results / 'OTB2015', 'noisy', 'otb', seq.name, pred)
    ours = score_results(seqs, results / 'OTB2015', 'noisy', 'otb')
    experiment = ExperimentOTB.__new__(ExperimentOTB)
    experiment.dataset = OurOTB(seqs)
    experiment.result_dir = str(results / 'OTB2015')
    experiment.report_dir = str(tmp_path / 'toolkit_reports')
    experiment.nbins_iou, experiment.nbins_ce = 21, 51
    official = experiment.report(['noisy'])['noisy']
    assert ours['overall']['auc'] == pytest.approx(official['overall']['success_score'], abs=TOL)
    assert ours['overall']['precision'] == pytest.approx(official['overall']['precision_score'], abs=TOL)
    np.testing.assert_allclose(ours['overall']['success_curve'], official['overall']['success_curve'], atol=TOL)
    for seq in seqs:
        assert ours['sequences'][seq.name]['auc'] == pytest.approx(
            official['seq_wise'][seq.name]['success_score'], abs=TOL)
    assert 0.1 < ours['overall']['auc'] < 0.9
