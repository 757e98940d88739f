"""Entry points run as typed: tools/demo.py (a small --scale run), tools/plot_log.py and
tools/bench_build.py, each in a subprocess, their outputs checked against what the test itself
counts and reads."""
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_train import ENV, ROOT


def _tool(name, *args):
    return [sys.executable, str(ROOT / "tools" / name), *map(str, args)]


def _run(cmd, **kw):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def test_demo_at_a_small_scale_runs_every_stage(tmp_path):
    """`tools/demo.py --scale 0.1` with 2 epochs of 2 steps: raw data, shards, training, evaluation
    of the trained model next to both baselines; the exit status is the verdict in its summary."""
    work = tmp_path / "demo"
    res = _run(_tool("demo.py", "--work", work, "--scale", "0.1", "--opts", "TRAIN.EPOCH=2", "TRAIN.BATCH_SIZE=4",
                     "DATASET.VIDEOS_PER_EPOCH=8"))
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr, res.stderr[-3000:]
    summary = json.loads((work / "demo_summary.json").read_text())
    assert res.returncode == (0 if summary["trained_beats_baselines"] else 1)
    assert summary["train"]["global_step"] == 4 and summary["train"]["skipped_steps"] == 0
    auc = summary["success_auc"]
    assert set(auc) == {"trained", "untrained", "static"} and all(0 <= v <= 1 for v in auc.values())
    report = json.loads((work / "eval" / "report.json").read_text())
    assert {k: v["overall"]["auc"] for k, v in report["trackers"].items()} == auc
    names = json.loads((work / "eval_sequences" / "SYNTH.json").read_text())
    assert all(len(v["img_names"]) == 20 for v in names.values())  # 60 frames x 0.1, at least 20
    for name in ("VID", "GOT10K", "COCO"):
        assert (work / "shards" / name / "index.msgpack").is_file()
    for png in (summary["curves_png"], work / "eval" / "success.png"):
        assert cv2.imread(str(png)) is not None
    assert (work / "train" / "checkpoint_e2.pth").is_file()
    verdict = "beats both baselines" if summary["trained_beats_baselines"] else "does NOT beat both baselines"
    assert verdict in res.stdout

    # a work folder that is not the demo's is refused in one line, and nothing in it is touched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    res = _run(_tool("demo.py", "--work", other))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {other} exists and is not a demo work folder; choose another --work"]
    assert (other / "notes.txt").read_text() == "keep me"


def test_mask_demo_at_a_small_scale_runs_every_stage(tmp_path):
    """`tools/demo.py --mask` shrunk: masks through shards, a base and a refine stage of 2 steps each,
    DAVIS-layout results of three trackers scored, overlays drawn from those results; the exit
    status is the verdict in its summary."""
    from track.vos.datasets import load_davis
    from track.vos.png import read_labels

    work = tmp_path / "demo_mask"
    res = _run(_tool("demo.py", "--mask", "--work", work, "--scale", "0.1", "--opts", "TRAIN.EPOCH=1",
                     "TRAIN.BATCH_SIZE=2", "DATASET.VIDEOS_PER_EPOCH=4", "--refine-opts", "TRAIN.EPOCH=2"))
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr, res.stderr[-3000:]
    summary = json.loads((work / "demo_summary.json").read_text())
    jf = summary["jf_mean"]
    assert set(jf) == {"trained", "box", "untrained"} and all(0 <= v <= 1 for v in jf.values())
    assert summary["trained_beats_baselines"] == (jf["trained"] > max(jf["box"], jf["untrained"]))
    assert res.returncode == (0 if summary["trained_beats_baselines"] else 1)
    assert summary["base"]["global_step"] == 2 and summary["refine"]["global_step"] == 4
    last = json.loads((work / "refine" / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["refine"]["mask_iou_mean"] == last["mask_iou_mean"] and 0 <= last["mask_iou_mean"] <= 1
    assert (work / "refine" / "checkpoint_e2.pth").is_file()
    for name in ("YTBVOS", "COCO"):
        assert (work / "shards" / name / "index.msgpack").is_file()
    # the figures are the official tool's table of each tracker's results
    for name in ("trained", "trained-box", "untrained"):
        rows = (work / "eval" / name / "global_results-val.csv").read_text().splitlines()
        assert float(rows[1].split(",")[0]) == pytest.approx(jf[name.replace("trained-", "")], abs=5e-4)
    # one overlay per shown sequence: a header, then 3 frames x (ground truth + the three results)
    sequences = load_davis(work / "raw" / "DAVIS", "2017/val")
    assert [Path(p).name for p in summary["overlays"]] == [f"{s.name}.png" for s in sequences[:3]]
    seq = sequences[0]
    image = cv2.imread(summary["overlays"][0])
    h, w = seq.read_frame(0).shape[:2]
    assert image.shape == (24 + 3 * h, 4 * w, 3)
    # the trained column of the first row is the frame tinted where its result PNG has the object
    labels = read_labels(work / "eval" / "trained" / seq.name / f"{seq.frame_ids[1]}.png")
    cell = image[24:24 + h, w:2 * w].astype(int)
    changed = np.abs(cell - seq.read_frame(1).astype(int)).max(axis=2) > 8
    assert (changed & (labels == 0)).mean() < 0.01 and (changed[labels > 0].mean() if (labels > 0).any() else 1) > 0.9
    assert "J&F-Mean" in res.stdout and ("beats both baselines" in res.stdout or "does NOT" in res.stdout)

    # the SiamRPN demo's options are refused with --mask, and --mask's without it, in one line
    for args in (["--mask", "--cfg", "configs/demo_cpu.yaml"], ["--refine-opts", "TRAIN.EPOCH=1"]):
        res = _run(_tool("demo.py", "--work", tmp_path / "refused", *args))
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("demo.py: error: --")
        assert not (tmp_path / "refused").exists()


def _metrics(run_dir: Path, steps: int) -> list:
    """metrics.jsonl as the trainer writes it (train.telemetry.MetricsWriter)."""
    from train.telemetry import MetricsWriter

    writer = MetricsWriter(run_dir)
    recs = [{"epoch": s // 10, "step": s, "lr": 0.01 * 0.9 ** (s // 10), "total_loss": 2.0 / s, "cls_loss": 1.0 / s,
             "loc_loss": 1.0 / s, "pairs_per_s": 100.0 + s, "data_wait_frac": 0.01, "skipped_steps": 0}
            for s in range(1, steps + 1)]
    for r in recs:
        writer.write(r)
    writer.close()
    return recs


def _has_colour(image, bgr, tol=40) -> bool:
    return bool((np.abs(image.astype(int) - np.array(bgr)).max(axis=2) < tol).sum() > 50)


def test_plot_log_draws_the_three_panels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics(run, 30)
    res = _run(_tool("plot_log.py", run))
    assert res.returncode == 0, res.stderr
    png = Path(res.stdout.strip())
    assert png == run / "curves.png"
    image = cv2.imread(str(png))
    assert image.shape[:2] == (900, 800)  # 8 x 9 inches at 100 dpi
    third = image.shape[0] // 3
    blue, red = (180, 119, 31), (40, 39, 214)  # matplotlib's tab:blue, tab:red in BGR
    assert _has_colour(image[:third], blue)  # the loss panel's first curve
    assert _has_colour(image[third:2 * third], blue)  # the lr schedule
    assert _has_colour(image[2 * third:], blue) and _has_colour(image[2 * third:], red)  # pairs/s, data wait
    assert not _has_colour(image[:2 * third], red)

    out = tmp_path / "elsewhere.png"
    assert _run(_tool("plot_log.py", run, "--out", out)).returncode == 0 and cv2.imread(str(out)) is not None

    res = _run(_tool("plot_log.py", tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nothing' / 'metrics.jsonl'} not found: is {tmp_path / 'nothing'} a training run folder?"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[4] = lines[4][:20]  # damage inside the file (a cut last line is a killed run's, and tolerated)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    res = _run(_tool("plot_log.py", run))
    assert res.returncode == 2 and res.stderr.strip() == f"error: {run / 'metrics.jsonl'}:5: not valid JSON"


@pytest.fixture(scope="module")
def raw_vid(tmp_path_factory):
    from pipeline.synthetic import make_dataset

    root = tmp_path_factory.mktemp("bench_build") / "raw"
    make_dataset("VID", root, videos=2, frames=6, seed=0, size=(160, 120), broken=False)
    return root


def test_bench_build_counts_and_rates(raw_vid, tmp_path):
    """Crop counts against the annotations and a build made here; rates against this test's clock."""
    from pipeline.ingest import build_dataset

    out = tmp_path / "bench.json"
    t0 = time.perf_counter()
    res = _run(_tool("bench_build.py", "--root", raw_vid, "--repeats", "1", "--json", out))
    total = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    objects = sum(len(ET.parse(x).findall("object")) for x in (raw_vid / "Annotations/VID/train").rglob("*.xml"))
    assert result["baseline_crops"] == objects > 0  # one 511 crop per annotated object per frame
    report = build_dataset("VID", raw_vid, tmp_path / "ours", workers=1, progress=False)
    assert result["crops"] == report["crops_written_this_run"] == report["counts"]["entries"]
    rates = result["crops_per_s_per_core"]
    # three timed builds ran one after the other inside the command: their times fit in its wall time
    spent = result["baseline_crops"] / rates["baseline"] + result["baseline_crops"] / rates["baseline_x_only"] \
        + result["crops"] / rates["ours"]
    assert 0 < spent < total
    assert result["ratio_vs_baseline"] == pytest.approx(rates["ours"] / rates["baseline"], rel=1e-2)
    assert result["ratio_vs_baseline_x_only"] == pytest.approx(rates["ours"] / rates["baseline_x_only"], rel=1e-2)
    assert f'ours / baseline (PySOT par_crop, z+x files): {result["ratio_vs_baseline"]:.2f}x' in res.stdout
