"""The official VOT toolkit (vot-toolkit 0.7.4) runs our tracker through the TraX entry point on a
tiny synthetic workspace; its analysis of that run equals ours, its run equals our protocol's, and
it reads the runs `tools/eval_vot.py` writes (and that tool scores the toolkit's runs)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_model
from train.config import load_config
from track.tracker import build_tracker
from track.vot.analysis import analyse
from track.engine import EngineOptions
from track.protocol import run_sequential
from track.vot.evaluate import batched_driver, evaluate_vot
from track.vot.protocol import SupervisedProtocol
from track.vot.results import read_runs
from track.vot.datasets import load_vot
from vot_synthetic import toolkit_scores, write_dataset, write_workspace

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:class_registry.*')

ROOT = Path(__file__).resolve().parents[1]
DEMO_CFG = ROOT / 'configs' / 'demo_cpu.yaml'
LOW, HIGH = 2, 20  # EAO interval inside these 24-frame sequences
KEYS = ('accuracy', 'robustness', 'ar_robustness', 'eao')


def damped_demo_model():
    """configs/demo_cpu.yaml at random init, box regression damped 100x so that its boxes stay
    near the anchors: it tracks a few frames, then fails (an undamped random head fails at once)."""
    torch.manual_seed(0)
    model = build_model(load_config(DEMO_CFG)).eval()
    with torch.no_grad():
        model.rpn_head.loc.head[3].weight.mul_(0.01)
    return model


@pytest.fixture(scope='module')
def toolkit_run(tmp_path_factory):
    """`vot evaluate` of our TraX entry point on 3 sequences (rectangles, rotated polygons, a jump)."""
    ws = tmp_path_factory.mktemp('ws')
    write_dataset(ws / 'sequences', {
        'rect': dict(n=24, velocity=(3, 0.5), seed=1),
        'poly': dict(n=24, angle=20, velocity=(2.5, 1), seed=2),
        'jump': dict(n=24, velocity=(1, 0), jump_at=10, jump_to=(110, 80), seed=3),
    })
    snapshot = ws / 'demo.pth'
    torch.save({'state_dict': damped_demo_model().state_dict()}, snapshot)
    ini = (f'[siamtrain]\nlabel = siamtrain\nprotocol = traxpython\ncommand = tools.trax_tracker\n'
           f'paths = {ROOT}\nenv_SIAMTRAIN_CFG = {DEMO_CFG}\nenv_SIAMTRAIN_SNAPSHOT = {snapshot}\n'
           f'env_SIAMTRAIN_DEVICE = cpu\nenv_SIAMTRAIN_THREADS = 1\n')
    write_workspace(ws, LOW, HIGH, repetitions=1, trackers_ini=ini)
    proc = subprocess.run([sys.executable, '-m', 'vot', 'evaluate', '--workspace', str(ws), 'siamtrain'],
                          capture_output=True, text=True, timeout=300)
    logs = '\n'.join(p.read_text()[-2000:] for p in (ws / 'logs').glob('*.log')) if (ws / 'logs').is_dir() else ''
    assert proc.returncode == 0 and 'concluded successfuly' in proc.stdout + proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    assert not (ws / 'logs').is_dir() or not list((ws / 'logs').glob('*.log')), logs  # no tracker error
    return ws, snapshot


def test_toolkit_analysis_of_its_run_equals_ours(toolkit_run):
    ws, _ = toolkit_run
    seqs = load_vot(ws / 'sequences')
    runs = {s.name: read_runs(ws / 'results', 'siamtrain', s.name) for s in seqs}  # its .bin files
    assert all(len(r) == 1 for r in runs.values())
    ours, theirs = analyse(seqs, runs, LOW, HIGH), toolkit_scores(ws, 'siamtrain')
    assert ours['lost'] >= 3 and ours['accuracy'] > 0  # frames past the burn-in, failures, re-inits
    for key in KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    np.testing.assert_allclose(ours['eao_curve'], theirs['eao_curve'], atol=1e-6)


def _sequential_runs(seqs):
    tracker = build_tracker(load_config(DEMO_CFG), damped_demo_model())
    return {s.name: [run_sequential(SupervisedProtocol(s), tracker, s.read_frame).regions] for s in seqs}


def _batched_runs(seqs, root, out):
    """All sequences through the batched engine (evaluate_vot's default driver), read back."""
    tracker = build_tracker(load_config(DEMO_CFG), damped_demo_model())
    evaluate_vot({'batched': tracker}, root, out, LOW, HIGH, progress=False, log=lambda *a: None,
                 drive=batched_driver(EngineOptions(batch_size=2)))
    return {s.name: read_runs(out / 'results', 'batched', s.name) for s in seqs}


@pytest.mark.parametrize('engine', ['sequential', 'batched'])
def test_our_protocol_reproduces_the_toolkits_run(toolkit_run, one_thread, engine, tmp_path):
    ws, _ = toolkit_run
    seqs = load_vot(ws / 'sequences')
    ours = _sequential_runs(seqs) if engine == 'sequential' else _batched_runs(seqs, ws / 'sequences', tmp_path)
    theirs = {s.name: read_runs(ws / 'results', 'siamtrain', s.name) for s in seqs}
    for s in seqs:
        a, b = ours[s.name][0], theirs[s.name][0]
        assert [r if isinstance(r, int) else -1 for r in a] == [r if isinstance(r, int) else -1 for r in b], s.name
        for x, y in zip(a, b):
            if not isinstance(x, int):  # TraX carries float32: differences of ~1e-4 px
                np.testing.assert_allclose(x, y, atol=1e-3)
    s_ours, s_theirs = analyse(seqs, ours, LOW, HIGH), analyse(seqs, theirs, LOW, HIGH)
    for key in KEYS:
        assert s_ours[key] == pytest.approx(s_theirs[key], abs=1e-3), key


@pytest.fixture
def one_thread():
    """One torch thread: the test machine's cores are shared (and the toolkit runs alongside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eval_vot(*args):
    """tools/eval_vot.py in this process (its main, as the command line calls it)."""
    sys.path.insert(0, str(ROOT))
    from tools.eval_vot import main
    main([str(a) for a in args] + ['--quiet'])


def test_eval_vot_runs_are_read_by_the_toolkit(toolkit_run, tmp_path, capsys, one_thread):
    ws, snapshot = toolkit_run
    out = tmp_path / 'out'
    eval_vot('--cfg', DEMO_CFG, '--snapshot', snapshot, '--dataset', ws / 'sequences',
             '--out', out, '--interval', f'{LOW},{HIGH}')
    report = json.loads((out / 'report.json').read_text())['trackers']['demo']
    assert 'demo' in capsys.readouterr().out and report['eao_interval'] == [LOW, HIGH]
    # the toolkit's analysis of the files we wrote (a second workspace over the same sequences)
    ws2 = write_workspace(tmp_path / 'ws2', LOW, HIGH, trackers_ini='[demo]\nprotocol = traxpython\ncommand = x\n')
    (ws2 / 'sequences').symlink_to(ws / 'sequences')
    (ws2 / 'results').symlink_to(out / 'results')
    of_ours, of_theirs = toolkit_scores(ws2, 'demo'), toolkit_scores(ws, 'siamtrain')
    for key in KEYS:
        assert report[key] == pytest.approx(of_ours[key], abs=1e-6), key
        # and the same run as the toolkit's own (float32 over TraX aside)
        assert report[key] == pytest.approx(of_theirs[key], abs=1e-3), key
    # --results scores stored runs: here the toolkit's own
    eval_vot('--dataset', ws / 'sequences', '--results', ws / 'results', '--trackers', 'siamtrain',
             '--out', tmp_path / 'scored', '--interval', f'{LOW},{HIGH}')
    scored = json.loads((tmp_path / 'scored' / 'report.json').read_text())['trackers']['siamtrain']
    assert scored['eao'] == pytest.approx(of_theirs['eao'], abs=1e-6)


def test_trax_entry_point_settings():
    sys.path.insert(0, str(ROOT))
    from tools.trax_tracker import parse_args
    args = parse_args([], {'SIAMTRAIN_CFG': 'a.yaml', 'SIAMTRAIN_SNAPSHOT': 'b.pth',
                           'SIAMTRAIN_OPTS': 'TRACK.LR=0.1 TRACK.PENALTY_K=0.2', 'SIAMTRAIN_THREADS': '2'})
    assert (args.cfg, args.snapshot, args.opts, args.threads) == ('a.yaml', 'b.pth',
                                                                  ['TRACK.LR=0.1', 'TRACK.PENALTY_K=0.2'], 2)
    assert parse_args(['--snapshot', 'c.pth'], {'SIAMTRAIN_SNAPSHOT': 'b.pth'}).snapshot == 'c.pth'
    with pytest.raises(SystemExit):
        parse_args([], {})
