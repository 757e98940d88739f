"""tools/bench_eval.py runs all its modes on a tiny synthetic set and writes its JSON; its rates
are checked against what is counted and timed outside the tool (no assertion on a speed: the
figures are measured by running the tool, see docs/benchmarks.md)."""
import json
import time

import pytest

from tools.bench_eval import main


def test_bench_eval_writes_every_mode_and_ratio(tmp_path):
    out = tmp_path / 'bench.json'
    start = time.perf_counter()
    main(['--videos', '2', '--frames', '3', '--settings', '2', '--json', str(out)])
    wall = time.perf_counter() - start  # the whole tool, measured from outside
    report = json.loads(out.read_text())
    assert set(report['results']) == {'sequential', 'batched', 'batched_1stream', 'batched_dense',
                                      'batched_fast', 'tune_batched', 'tune_one_by_one'}
    assert set(report['ratios']) == {'batched_vs_sequential', 'batched_1stream_vs_sequential',
                                     'batched_dense_vs_sequential', 'batched_fast_vs_sequential',
                                     'tune_batched_vs_one_by_one'}
    assert report['results']['sequential']['max_box_diff_px'] == 0.0
    assert report['results']['batched']['max_box_diff_px'] <= 1e-3
    assert report['results']['tune_batched']['setting_frames'] == 2 * report['frames']
    # the rates: frames counted outside (2 videos x 3 frames) over each mode's own time, and every
    # mode ran once inside the call, so their times add up to no more than the call's wall time
    results = report['results']
    assert report['frames'] == 2 * 3 and report['repeat'] == 1
    assert 0 < sum(r['seconds'] for r in results.values()) <= wall
    for name, r in results.items():
        if name.startswith('tune_'):
            assert r['setting_frames_per_s'] == pytest.approx(2 * 6 / r['seconds'])
        else:
            assert r['fps'] == pytest.approx(6 / r['seconds'])
    for name in ('batched', 'batched_1stream', 'batched_dense', 'batched_fast'):
        assert report['ratios'][f'{name}_vs_sequential'] == pytest.approx(
            results['sequential']['seconds'] / results[name]['seconds'])
    assert report['ratios']['tune_batched_vs_one_by_one'] == pytest.approx(
        results['tune_one_by_one']['seconds'] / results['tune_batched']['seconds'])
    bound = report['compute_bound']  # demo AlexNet search at 287: about 3.6 GFLOP
    assert 3.0 < bound['search_gflop_per_frame'] < 4.0 and bound['fastest_conv_gflops'] > 0
    assert bound['least_ms_per_frame'] == pytest.approx(1e3 * bound['search_gflop_per_frame'] / bound['fastest_conv_gflops'])
    assert bound['ceiling_vs_sequential'] > 0
    assert len(report['load_average_before']) == 3 and report['cpus'] >= 1
