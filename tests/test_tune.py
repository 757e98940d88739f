"""tools/tune.py: settings batched with sequences give the boxes of separate runs, every result is
stored as it finishes and a rerun resumes, the ranked report, heatmap and winner config (read by
tools/eval.py), and the refusal to tune on the report set."""
import json

import cv2
import numpy as np
import pytest
import torch

from model import build_model
from pipeline.synthetic import make_eval
from tools.eval import main as eval_main
from tools.tune import main as tune_main
from track.protocol import OnePassProtocol, run_sequential
from track.datasets import load_sequences
from track.tracker import build_tracker
from track.metrics import score_tracker
from track.tune import Search, parse_space, sample_settings, setting_config, setting_id
from train.config import load_config

DEMO_CFG = 'configs/demo_cpu.yaml'


@pytest.fixture(scope='module')
def tuning(tmp_path_factory):
    """A tuning set (2 sequences x 6 frames), a report set and two random checkpoints."""
    root = tmp_path_factory.mktemp('tune')
    make_eval(root / 'tune_set', videos=2, frames=6, seed=31)
    make_eval(root / 'test_set', videos=1, frames=3, seed=32)
    cfg = load_config(DEMO_CFG)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        torch.save({'epoch': epoch, 'state_dict': build_model(cfg).state_dict(), 'config': cfg.to_dict()},
                   root / f'checkpoint_e{epoch}.pth')
    return root


def tune_args(root, out, *extra):
    return ['--checkpoints', str(root), '--dataset', str(root / 'tune_set'), '--report-set', str(root / 'test_set'),
            '--param', 'PENALTY_K=0.05,0.3', '--param', 'WINDOW_INFLUENCE=0.2,0.6', '--param', 'LR=0.35',
            '--out', str(out), '--quiet', '--batch-size', '5', *extra]


def test_settings_batched_with_sequences_resume_and_the_winner_config(tuning, tmp_path):
    out = tmp_path / 'search'
    first = tune_main(tune_args(tuning, out))
    assert first['computed'] == 2 * 4 * 2 and first['reused'] == 0  # checkpoints x settings x sequences
    assert len(first['ranked']) == 8 and not first['incomplete'] and first['warning'] is None
    aucs = [r['auc'] for r in first['ranked']]
    assert aucs == sorted(aucs, reverse=True)
    # each stored (checkpoint, setting, sequence) is the sequential tracker's run with that setting
    cfg = load_config(DEMO_CFG)
    seqs = load_sequences(tuning / 'tune_set', 'otb')
    search = Search(out, tuning / 'tune_set', 'otb', cfg.TRACK)
    for row in first['ranked'][::3]:
        model = build_model(cfg)
        model.load_state_dict(torch.load(row['checkpoint_path'], weights_only=True)['state_dict'])
        tracker = build_tracker(setting_config(cfg, row['setting']), model)
        for seq in seqs:
            want = run_sequential(OnePassProtocol(seq), tracker, seq.read_frame).boxes
            got = search.load(row['checkpoint_key'], row['setting_id'], seq.name)
            np.testing.assert_allclose(got, want, atol=1e-3)
    # an interrupted search: results that never got written are tracked again, the rest reused
    stored = sorted((out / 'runs').rglob('*.json'))
    assert len(stored) == 16 and not list((out / 'runs').rglob('*.tmp'))
    for path in stored[::5]:
        path.unlink()
    again = tune_main(tune_args(tuning, out))
    assert again['computed'] == len(stored[::5]) and again['reused'] == 16 - len(stored[::5])
    assert [(r['checkpoint_key'], r['setting_id'], r['auc']) for r in again['ranked']] == \
        [(r['checkpoint_key'], r['setting_id'], r['auc']) for r in first['ranked']]
    # the report files, and a winner config that tools/eval.py takes and that scores as ranked
    winner = first['winner']
    assert (out / 'heatmap.png').stat().st_size > 0
    text = (out / 'report.txt').read_text()
    assert 'PENALTY_K' in text and winner['checkpoint'] in text
    assert json.loads((out / 'report.json').read_text())['winner']['setting_id'] == winner['setting_id']
    saved = load_config(out / 'winner.yaml')
    assert {k: saved.TRACK[k] for k in winner['setting']} == winner['setting']
    eval_main(['--cfg', str(out / 'winner.yaml'), '--snapshot', winner['checkpoint_path'],
               '--dataset', str(tuning / 'tune_set'), '--out', str(tmp_path / 'eval'), '--quiet'])
    report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert report['trackers'][winner['checkpoint']]['overall']['auc'] == pytest.approx(winner['auc'], abs=1e-6)


def test_tuning_on_the_report_set_is_refused_unless_allowed_and_then_reported(tuning, tmp_path):
    same = ['--report-set', str(tuning / 'tune_set')]
    for report_set in (tuning / 'tune_set', tuning):  # the same folder, or one that holds it
        args = tune_args(tuning, tmp_path / 'refused')
        args[args.index('--report-set') + 1] = str(report_set)
        with pytest.raises(SystemExit, match='inflates'):
            tune_main(args)
    assert not (tmp_path / 'refused').exists()
    args = tune_args(tuning, tmp_path / 'allowed', '--allow-test-tuning', '--snapshot',
                     str(tuning / 'checkpoint_e1.pth'))
    args[args.index('--checkpoints'):args.index('--checkpoints') + 2] = []
    args[args.index('--report-set') + 1] = same[1]
    report = tune_main(args)
    assert report['tuned_on_report_set'] and 'TUNED ON THE REPORT SET' in report['warning']
    assert 'TUNED ON THE REPORT SET' in (tmp_path / 'allowed' / 'report.txt').read_text()
    assert 'TUNED ON THE REPORT SET' in (tmp_path / 'allowed' / 'winner.yaml').read_text()
    # the search folder belongs to this tuning set: another set there is refused
    args[args.index('--dataset') + 1] = str(tuning / 'test_set')
    with pytest.raises(SystemExit, match='holds another search'):
        tune_main(args)


def test_parameter_space_grid_and_random_sample():
    track = load_config(DEMO_CFG).TRACK
    space = parse_space(['PENALTY_K=0.1,0.2', 'TRACK.WINDOW_INFLUENCE=0.3:0.5', 'INSTANCE_SIZE=255:271'], track)
    assert space == {'PENALTY_K': [0.1, 0.2], 'WINDOW_INFLUENCE': (0.3, 0.5), 'INSTANCE_SIZE': (255, 271)}
    with pytest.raises(ValueError, match='needs random sampling'):
        sample_settings(space)
    drawn = sample_settings(space, samples=12, seed=4)
    assert len(drawn) == 12 and len({setting_id(s) for s in drawn}) == 12
    assert drawn == sample_settings(space, samples=12, seed=4)
    for s in drawn:
        assert s['PENALTY_K'] in (0.1, 0.2) and 0.3 <= s['WINDOW_INFLUENCE'] <= 0.5
        assert isinstance(s['INSTANCE_SIZE'], int) and 255 <= s['INSTANCE_SIZE'] <= 271
    grid = sample_settings(parse_space(['PENALTY_K=0.1,0.2,0.3', 'LR=0.3,0.4'], track))
    assert len(grid) == 6 and {(s['PENALTY_K'], s['LR']) for s in grid} == {
        (k, lr) for k in (0.1, 0.2, 0.3) for lr in (0.3, 0.4)}
    for bad, message in (('NOPE=1', 'no key'), ('TYPE=a,b', 'not a number'), ('LR=0.5:0.1', 'low<high'),
                         ('INSTANCE_SIZE=25.5', 'ints'), ('LR', 'KEY=v1')):
        with pytest.raises(ValueError, match=message):
            parse_space([bad], track)


def write_got10k_sequence(folder, frames: int, boxes: int):
    """A GOT-10k sequence folder: a square moving 3 px a frame; `boxes` ground-truth lines
    (1: the test split's first box only)."""
    folder.mkdir(parents=True)
    lines = []
    for i in range(frames):
        img = np.full((96, 128, 3), 50, np.uint8)
        img[30:54, 20 + 3 * i:44 + 3 * i] = (40, 200, 230)
        cv2.imwrite(str(folder / f'{i + 1:08d}.jpg'), img)
        lines.append(f'{20 + 3 * i},30,24,24\n')
    (folder / 'groundtruth.txt').write_text(''.join(lines[:boxes]))


def test_tuning_scores_only_sequences_with_full_ground_truth(tuning, tmp_path):
    """A first-box-only sequence (GOT-10k's test split) is neither tracked nor scored (it once
    was tracked, then stopped the scoring); a set of only such sequences is refused."""
    root = tmp_path / 'got'
    write_got10k_sequence(root / 'GOT-10k_Val_000001', 5, 5)
    write_got10k_sequence(root / 'GOT-10k_Test_000001', 5, 1)
    out = tmp_path / 'search'
    args = ['--snapshot', str(tuning / 'checkpoint_e1.pth'), '--dataset', str(root), '--format', 'got10k',
            '--report-set', str(tuning / 'test_set'), '--param', 'PENALTY_K=0.05,0.3', '--quiet']
    report = tune_main(args + ['--out', str(out)])
    assert report['computed'] == 2 and report['sequences'] == 1 and report['metric'] == 'ao'
    assert not list((out / 'runs').rglob('GOT-10k_Test_000001.json'))
    scored = [s for s in load_sequences(root, 'got10k') if s.has_full_gt]
    search = Search(out, root, 'got10k', load_config(DEMO_CFG).TRACK)
    for row in report['ranked']:
        boxes = search.load(row['checkpoint_key'], row['setting_id'], 'GOT-10k_Val_000001')
        want = score_tracker(scored, {'GOT-10k_Val_000001': {'boxes': boxes}}, 'got10k')
        assert row['auc'] == want['overall']['auc'] and row['ao'] == want['got10k']['overall']['ao']
        assert 0 <= row['ao'] <= 1 and not np.isnan(row['auc'])
    (root / 'GOT-10k_Val_000001' / 'groundtruth.txt').write_text('20,30,24,24\n')
    with pytest.raises(SystemExit, match='no sequence has ground truth beyond its first box'):
        tune_main(args + ['--out', str(tmp_path / 'none')])
