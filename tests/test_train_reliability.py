"""The trainer under hostile-but-fair use (issue 12): a reused run folder, a lost or broken
latest.pth, a kill between a checkpoint and the next metrics record, a full disk, a finished run
resumed, files that are not checkpoints, and damaged crops. Real shards, real files, a small disk
(a real tmpfs, or one simulated at the write seam: tests/conftest.py).
"""
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.fileio import DISK_LIMIT_ENV
from test_train import ENV, _cfg, _cmd, _EachBatch
from train.checkpoint import CheckpointError
from train.trainer import Trainer

TIMING = {"pairs_per_s", "data_wait_frac"}  # differ between any two runs
THREE = ["TRAIN.EPOCH=3", "DATASET.VIDEOS_PER_EPOCH=8", "TRAIN.CKPT_INTERVAL=0"]  # 3 epochs x 2 steps


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _run(cmd):
    env = {**ENV, **{k: os.environ[k] for k in (DISK_LIMIT_ENV,) if k in os.environ}}  # a small_disk's
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train(shards, out, *opts, **kw):  # noqa: F811
    trainer = Trainer(_cfg(*opts), shards=shards, out_dir=out, device="cpu", show_progress=False, **kw)
    return trainer, trainer.fit()


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):  # noqa: F811
    """A finished 3-epoch run (checkpoint_e1..3, latest.pth, metrics, summary)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _train(shards, out, *THREE)
    return out


def test_fresh_run_refuses_an_earlier_run_unless_resume_or_overwrite(shards, finished, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = _run(_cmd(shards, out, opts=THREE))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "--resume" in lines[0] and "--overwrite" in lines[0], lines
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched

    # --overwrite that fails to start (a config error): the earlier run is still all there
    res = _run(_cmd(shards, out, "--overwrite", opts=THREE + ["TRAIN.LR_WARMUP.EPOCH=5"]))
    assert res.returncode == 2 and "LR_WARMUP" in res.stderr, res.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # --overwrite: a shorter run in the same folder; nothing of the earlier run is left over
    res = _run(_cmd(shards, out, "--overwrite", opts=["TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=8",
                                                        "TRAIN.CKPT_INTERVAL=0"]))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "checkpoint_e3.pth").exists() and not list(out.glob(".overwritten*"))
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["global_step"] == 4
    assert (out / "train.log").read_text().count("epoch 1/") == 1  # the earlier run's log is gone


def test_resume_takes_the_newest_checkpoint_that_loads(shards, finished, tmp_path):  # noqa: F811
    # Killed while writing the first latest.pth (CKPT_INTERVAL 0): only checkpoint_e1.pth is there.
    lost = tmp_path / "lost"
    lost.mkdir()
    shutil.copy(finished / "checkpoint_e1.pth", lost)
    trainer, summary = _train(shards, lost, *THREE, resume=True)
    assert summary["global_step"] == 6
    assert "checkpoint_e1.pth" in (lost / "train.log").read_text()
    ref = torch.load(finished / "checkpoint_e3.pth", weights_only=True)["state_dict"]
    got = torch.load(lost / "checkpoint_e3.pth", weights_only=True)["state_dict"]
    for k, v in ref.items():  # the resumed run ends where the uninterrupted one did, bit for bit
        assert torch.equal(v, got[k]), k

    # A broken latest.pth, and one older than an epoch checkpoint (its write failed): the epoch
    # checkpoint with the highest global step is taken, and the log says which and why.
    for name, latest in (("broken", b"half a checkpoint"), ("older", (finished / "checkpoint_e1.pth").read_bytes())):
        out = tmp_path / name
        out.mkdir()
        for e in (1, 2):
            shutil.copy(finished / f"checkpoint_e{e}.pth", out)
        (out / "latest.pth").write_bytes(latest)
        t = Trainer(_cfg(*THREE), shards=shards, out_dir=out, device="cpu", show_progress=False, resume=True)
        assert (t.epoch, t.global_step) == (2, 4), name
        log = (out / "train.log").read_text()
        assert "the newest checkpoint that loads is" in log and "checkpoint_e2.pth" in log, log
        assert "not using" in log and "latest.pth" in log, log


class _KilledAt(Exception):
    pass


def _dies_at(loader, at):
    """The real loader; raises before yielding global batch ``at`` (a kill between two steps)."""
    def change(epoch, i, batch):
        if epoch * len(loader) + i + 1 == at:
            raise _KilledAt
        return batch

    return _EachBatch(loader, change)


def test_metrics_after_a_resume_read_as_an_uninterrupted_run(shards, tmp_path):  # noqa: F811
    """latest.pth at step 2, the record of step 3 written, killed at step 4; the resumed run drops
    the record of step 3 (it trains it again) and continues the PRINT_FREQ interval begun before
    the kill, so metrics.jsonl equals the uninterrupted run's (timing fields aside)."""
    from pipeline import build_loader

    opts = ["TRAIN.EPOCH=2", "TRAIN.PRINT_FREQ=3", "TRAIN.CKPT_INTERVAL=2"]  # 2 epochs x 4 steps
    _train(shards, tmp_path / "ref", *opts)
    cfg = _cfg(*opts)
    loader = build_loader(cfg, shards=str(shards), batch_size=4, device="cpu", seed=cfg.TRAIN.SEED)
    cut = tmp_path / "cut"
    with pytest.raises(_KilledAt):
        Trainer(cfg, shards=shards, out_dir=cut, device="cpu", show_progress=False,
                loader=_dies_at(loader, at=4)).fit()
    assert [r["step"] for r in _records(cut)] == [3]
    assert torch.load(cut / "latest.pth", weights_only=True)["global_step"] == 2
    _train(shards, cut, *opts, resume=True)
    ref, got = _records(tmp_path / "ref"), _records(cut)
    assert [r["step"] for r in got] == [3, 4, 7, 8]
    assert _without_timing(got) == _without_timing(ref)


def _checkpoint_bytes(shards):  # noqa: F811
    """Size of a checkpoint after the first step (momentum buffers included)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(_cfg(), shards=shards, out_dir=tmp, device="cpu", show_progress=False)
        t.train_step(next(iter(t.batches())))
        buf = io.BytesIO()
        torch.save(t.checkpoint_payload(), buf)
        return buf.tell()


def test_disk_full_while_saving_a_checkpoint(shards, small_disk):  # noqa: F811
    """Room for one checkpoint (latest.pth at step 2), not for the next one (checkpoint_e1.pth at
    step 4): one line 'no space left on <folder>', also in train.log; exit status 1; no traceback;
    latest.pth intact."""
    size = _checkpoint_bytes(shards)
    mnt = small_disk(int(1.6 * size) + 256 * 1024)
    out = mnt / "run"
    res = _run(_cmd(shards, out))
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert f"no space left on {out}" in last, res.stderr[-3000:]
    assert "no space left on" in (out / "train.log").read_text()
    assert torch.load(out / "latest.pth", weights_only=True)["global_step"] == 2
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_resume_of_a_finished_run_keeps_its_summary(shards, finished):  # noqa: F811
    before = (finished / "summary.json").read_bytes()
    res = _run(_cmd(shards, finished, "--resume", opts=THREE))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nothing to resume: the run finished at epoch 3" in res.stdout
    assert (finished / "summary.json").read_bytes() == before


def test_text_or_empty_checkpoints_are_one_line_errors(shards, tmp_path):  # noqa: F811
    text = tmp_path / "notes.pth"
    text.write_text("epoch 3 went well\n")
    res = _run(_cmd(shards, tmp_path / "run", "--resume", str(text)))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert str(text) in lines[0] and "not a torch checkpoint" in lines[0] and "weights_only" not in lines[0]
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        Trainer(_cfg(f"TRAIN.PRETRAINED={empty}"), shards=shards, out_dir=tmp_path / "p", device="cpu")
    assert str(empty) in str(err.value) and "not a torch checkpoint" in str(err.value)


def test_replaced_crops_are_visible_in_bar_log_metrics_and_summary(shards, tmp_path):  # noqa: F811
    from pipeline.shards import ShardReader, shard_dir
    from test_loader import _corrupt

    root = tmp_path / "cache"
    shutil.copytree(shards, root)
    vid = shard_dir(root, "VID")
    reader = ShardReader(vid)
    for e in range(0, len(reader), 3):  # every third crop unreadable
        _corrupt(vid, reader, e, b"\xff\xd8 not a jpeg any more")
    reader.close()
    out = tmp_path / "run"
    # a third of the crops damaged: far above the default ceiling (TRAIN.MAX_REPLACED_FRAC, tests/test_train_stop.py)
    cmd = [c for c in _cmd(root, out, opts=["TRAIN.EPOCH=2", "TRAIN.MAX_REPLACED_FRAC=-1"]) if c != "--no-progress"]
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    replaced = int(torch.load(out / "latest.pth", weights_only=True)["loader"]["skipped"])
    assert replaced > 0
    assert f"replaced={replaced}" in res.stderr  # the tqdm bar
    assert f"{replaced} replaced crops so far" in (out / "train.log").read_text()
    recs = _records(out)
    assert recs[-1]["replaced_crops"] == replaced and all("replaced_crops" in r for r in recs)
    assert json.loads((out / "summary.json").read_text())["replaced_crops"] == replaced


def test_free_space_is_checked_against_the_checkpoint_size_before_training(shards, small_disk):  # noqa: F811
    """No room for one checkpoint: a one-line error before anything trains (not a failed save an
    epoch later); room for one but not for every epoch checkpoint: a warning, and the run starts."""
    from train.preflight import PreflightError

    size = _checkpoint_bytes(shards)
    mnt = small_disk(size // 2)
    with pytest.raises(PreflightError) as err:
        Trainer(_cfg(*THREE), shards=shards, out_dir=mnt / "run", device="cpu", show_progress=False)
    assert str(err.value).startswith(f"{mnt / 'run'}: ") and "MiB free, but one checkpoint takes about" in str(err.value)
    assert not (mnt / "run" / "metrics.jsonl").exists()
    small_disk(int(2.5 * size))  # room for two checkpoints; the run writes three epoch checkpoints and latest.pth
    t = Trainer(_cfg(*THREE), shards=shards, out_dir=mnt / "run", device="cpu", show_progress=False)
    t.close()
    assert "holds fewer than the 3 epoch checkpoints and latest.pth this run writes" in (mnt / "run" / "train.log").read_text()


def test_resume_with_other_shards_says_so(shards, finished, tmp_path):  # noqa: F811
    """The checkpoint records the shards it was trained on: the same shards moved elsewhere resume
    (and the log says they moved); other shards are a one-line error naming both folders."""
    from sampling_fixtures import VID_TRACKS, write_crop511
    from pipeline.ingest import build_dataset

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    t = Trainer(_cfg(*THREE[:-1], "TRAIN.EPOCH=4"), shards=moved, out_dir=run, device="cpu", show_progress=False,
                resume=True)
    t.close()
    assert f"--resume: the shards moved from {Path(shards).resolve()} to {moved.resolve()} (same content)" in \
        (run / "train.log").read_text()

    other = tmp_path / "other"
    anno = write_crop511(tmp_path / "crop511", VID_TRACKS, seed=1)
    build_dataset("VID", out_root=other, from_crop511=tmp_path / "crop511", anno=anno, progress=False)
    res = _run(_cmd(other, run, "--resume", opts=THREE[:-1] + ["TRAIN.EPOCH=4"]))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()  # the log of the resume point, then the error
    assert "Traceback" not in res.stderr and lines[-1].startswith(f"error: --resume: {run / 'latest.pth'} was trained on "
                                                   f"--shards {Path(shards).resolve()}, this command gives --shards "
                                                   f"{other.resolve()}, whose VID shards differ"), lines
