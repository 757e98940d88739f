"""tools/bench_eval.py runs all its modes on a tiny synthetic set and writes its JSON (no timing
assertions: the figures are measured by running the tool, see the README)."""
import json

import pytest

from tools.bench_eval import main


def test_bench_eval_writes_every_mode_and_ratio(tmp_path):
    out = tmp_path / 'bench.json'
    main(['--videos', '2', '--frames', '3', '--settings', '2', '--json', str(out)])
    report = json.loads(out.read_text())
    assert set(report['results']) == {'sequential', 'batched', 'batched_1stream', 'batched_dense',
                                      'batched_fast', 'tune_batched', 'tune_one_by_one'}
    assert set(report['ratios']) == {'batched_vs_sequential', 'batched_1stream_vs_sequential',
                                     'batched_dense_vs_sequential', 'batched_fast_vs_sequential',
                                     'tune_batched_vs_one_by_one'}
    assert report['results']['sequential']['max_box_diff_px'] == 0.0
    assert report['results']['batched']['max_box_diff_px'] <= 1e-3
    assert report['results']['tune_batched']['setting_frames'] == 2 * report['frames']
    bound = report['compute_bound']  # demo AlexNet search at 287: about 3.6 GFLOP
    assert 3.0 < bound['search_gflop_per_frame'] < 4.0 and bound['fastest_conv_gflops'] > 0
    assert bound['least_ms_per_frame'] == pytest.approx(1e3 * bound['search_gflop_per_frame'] / bound['fastest_conv_gflops'])
    assert bound['ceiling_vs_sequential'] > 0
    assert len(report['load_average_before']) == 3 and report['cpus'] >= 1
