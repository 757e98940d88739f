"""The evaluators as users stop them and feed them: Ctrl-C in tools/eval.py, tools/eval_vot.py and
tools/eval_vos.py ends in one line and the same command then reuses the sequences already written; a VOT sequence
whose first region, or the region of a re-initialisation frame, has no area is one line naming
the file, line and box. Real processes, real signals."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.synthetic import make_eval
from test_train import ENV, ROOT
from vot_synthetic import write_dataset

DEMO = ROOT / "configs" / "demo_cpu.yaml"
QUARTER = ["BACKBONE.KWARGS={width_mult: 0.25}", "RPN.KWARGS={anchor_num: 5, in_channels: 64, out_channels: 64}"]
UNTRAINED = ["--cfg", str(DEMO), "--baselines", "untrained", "--sequential", "--quiet", "--opts", *QUARTER]


def _tool(name, *args):
    return [sys.executable, str(ROOT / "tools" / name), *map(str, args)]


def _run(cmd):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _interrupt_after_first(cmd, written, total: int):
    """Start ``cmd`` in its own session, Ctrl-C it (SIGINT to its process group, as a terminal
    does) once ``written()`` lists a finished sequence; returns (process, stderr, files then)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t_end = time.monotonic() + 300
    while not written():
        if proc.poll() is not None or time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"no sequence written before the end (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    files = written()
    assert 1 <= len(files) < total, f"{len(files)} of {total} written: the interrupt came too late to test a rerun"
    return proc, err, {p: p.stat().st_mtime_ns for p in files}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def otb(tmp_path_factory):
    return make_eval(tmp_path_factory.mktemp("eval_stop") / "seqs", videos=5, frames=24, seed=3)["root"]


def test_ctrl_c_in_eval_then_the_same_command_tracks_only_the_rest(otb, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    res = _run(_tool("eval.py", *UNTRAINED, "--dataset", otb, "--out", ref))
    assert res.returncode == 0, res.stderr[-3000:]
    cmd = _tool("eval.py", *UNTRAINED, "--dataset", otb, "--out", out)
    proc, err, written = _interrupt_after_first(cmd, lambda: sorted((out / "results" / "untrained").glob("*.txt")), 5)
    assert proc.returncode == 130
    line = _one_line(err)
    assert line.startswith("interrupted by SIGINT: the sequences finished so far are in ") and str(out) in line

    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"untrained: reusing {len(written)} of 5 sequences that an interrupted evaluation wrote" in res.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # reused, not tracked again
    for p in sorted((ref / "results" / "untrained").glob("*.txt")):
        assert (out / "results" / "untrained" / p.name).read_text() == p.read_text(), p.name
    auc = [json.loads((d / "report.json").read_text())["trackers"]["untrained"]["overall"]["auc"] for d in (ref, out)]
    assert auc[0] == auc[1]
    assert not (out / "results" / "untrained" / ".unfinished.json").exists()


def test_an_interrupted_evaluation_is_reused_only_by_the_same_tracker(otb, tmp_path):
    from track.datasets import load_sequences
    from track.ope import UNFINISHED, finished_before, tracker_key
    from track.results import write_results
    from track.snapshots import make_trackers
    from train.config import load_config

    seqs = load_sequences(otb, "otb")
    cfg = load_config(DEMO, QUARTER)
    key = tracker_key(make_trackers(cfg, baselines=["untrained"])["untrained"], otb, "otb")
    for seq in seqs[:2]:  # an evaluation interrupted after two sequences
        write_results(tmp_path, "t", "otb", seq.name, seq.groundtruth)
    (tmp_path / "t" / UNFINISHED).write_text(json.dumps({"key": key}))
    assert [s.name for s in finished_before(tmp_path, "t", "otb", seqs, key)] == [s.name for s in seqs[:2]]
    others = [make_trackers(cfg.replace(["TRACK.LR=0.5"]), baselines=["untrained"])["untrained"],  # another setting
              make_trackers(cfg, baselines=["untrained"], seed=1)["untrained"],  # other weights
              make_trackers(cfg, baselines=["static"])["static"]]
    for other in others:
        assert finished_before(tmp_path, "t", "otb", seqs, tracker_key(other, otb, "otb")) == []
    assert key == tracker_key(make_trackers(cfg, baselines=["untrained"])["untrained"], otb, "otb")
    (tmp_path / "t" / UNFINISHED).unlink()  # a finished evaluation leaves no marker: nothing is reused
    assert finished_before(tmp_path, "t", "otb", seqs, key) == []


@pytest.fixture(scope="module")
def vot(tmp_path_factory):
    root = tmp_path_factory.mktemp("vot_stop") / "seqs"
    return write_dataset(root, {f"s{i}": {"n": 24, "seed": i} for i in range(4)})


def test_ctrl_c_in_eval_vot_then_the_same_command_reuses_the_stored_runs(vot, tmp_path):
    out = tmp_path / "out"
    cmd = _tool("eval_vot.py", *UNTRAINED, "--dataset", vot, "--out", out)
    runs = out / "results" / "untrained" / "baseline"
    proc, err, written = _interrupt_after_first(cmd, lambda: sorted(runs.glob("*/*_001.txt")), 4)
    assert proc.returncode == 130
    line = _one_line(err)
    assert line.startswith("interrupted by SIGINT: the runs finished so far are stored in ") and "--restart" in line
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"untrained: reused {len(written)} stored run(s)" in res.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert len(list(runs.glob("*/*_001.txt"))) == 4


def test_ctrl_c_in_eval_vos_then_the_same_command_keeps_the_finished_sequences(tmp_path):
    from pipeline.synthetic import make_dataset

    davis = tmp_path / "DAVIS"
    make_dataset("DAVIS", davis, videos=8, frames=16, seed=5, broken=False)
    mask_cfg = ROOT / "configs" / "demo_mask_refine_cpu.yaml"
    out = tmp_path / "out"
    cmd = _tool("eval_vos.py", "--cfg", mask_cfg, "--baselines", "untrained", "--sequential", "--quiet",
                "--dataset", davis, "--out", out)
    sequences = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()

    def finished():
        return sorted(p for s in sequences for p in (out / "untrained" / s).glob("*.png")
                      if len(list((out / "untrained" / s).glob("*.png"))) == 16)

    proc, err, written = _interrupt_after_first(cmd, finished, 16 * len(sequences))
    assert proc.returncode == 130
    line = _one_line(err)
    assert line.startswith(f"interrupted by SIGINT: the sequences finished so far are stored in {out}")
    kept = len({p.parent for p in written})
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"untrained: {kept} sequence(s) kept from an earlier run" in res.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert all(len(list((out / "untrained" / s).glob("*.png"))) == 16 for s in sequences)


@pytest.mark.parametrize("first", ["20,40,0,20", "20,40,-5,20", "20,40,26,0"], ids=["zero-w", "negative-w", "zero-h"])
def test_eval_vot_first_region_without_area_is_one_line(tmp_path, first):
    root = write_dataset(tmp_path / "seqs", {"a": {"n": 12}})
    gt = root / "a" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join([first] + lines[1:]) + "\n")
    res = _run(_tool("eval_vot.py", "--baselines", "static", "--dataset", root, "--out", tmp_path / "out", "--quiet"))
    assert res.returncode == 1
    shown = ",".join(f"{float(v):g}" for v in first.split(","))
    assert _one_line(res.stderr) == (f"error: {gt}:1: sequence 'a': first region: box {shown} cannot start a tracker "
                                     f"(w and h must be > 0)")


@pytest.mark.parametrize("engine", [[], ["--sequential"]], ids=["batched", "sequential"])
def test_eval_vot_reinitialisation_region_without_area_is_one_line(tmp_path, engine):
    """The static box loses the target where it jumps (frame 10); 5 frames later the tracker is
    re-initialised on frame 15's region, which has no area."""
    root = write_dataset(tmp_path / "seqs", {"b": {"n": 24, "jump_at": 10, "jump_to": (110, 80)}})
    gt = root / "b" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    x, y = lines[15].split(",")[:2]
    lines[15] = f"{x},{y},0,0"
    gt.write_text("\n".join(lines) + "\n")
    res = _run(_tool("eval_vot.py", "--baselines", "static", "--dataset", root, "--out", tmp_path / "out",
                     "--quiet", *engine))
    assert res.returncode == 1
    assert _one_line(res.stderr) == (f"error: {gt}:16: sequence 'b', frame 15 (a re-initialisation): box "
                                     f"{float(x):g},{float(y):g},0,0 cannot start a tracker (w and h must be > 0)")
