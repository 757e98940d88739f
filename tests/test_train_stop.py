"""Training stopped the way clusters stop it (docs/reliability.md): SIGTERM and Ctrl-C end a run
after the step in flight with a checkpoint that --resume continues bit for bit; a signal before the
first step and a kill before the first checkpoint leave a folder a plain rerun starts afresh; one
rank of a DDP run signalled alone; one run per run folder; shards too damaged to train on.
Real processes, real signals, real shards."""
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.shards import ShardReader, release_read_env, shard_dir
from shard_damage import fit_jpeg
from test_loader import _corrupt
from test_train import ENV, _cfg, _cmd
from train.trainer import RunStopped, Trainer

OPTS = ["TRAIN.EPOCH=2", "TRAIN.CKPT_INTERVAL=0"]  # 2 x 4 steps, unfreeze at 1; no mid-epoch checkpoint unless asked
TIMING = {"pairs_per_s", "data_wait_frac"}  # differ between any two runs


def _records(run_dir) -> list:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _run(cmd, **kw):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def _start(cmd):
    """A run in its own session (its own process group, as a shell job)."""
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(done, proc, what: str, timeout=300):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if done():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {what} within {timeout}s")


def _step_done(out, step):
    return lambda: any(r["step"] >= step for r in _records(out))


def _catches(pid: int, sig: int) -> bool:
    """True once process ``pid`` has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _last_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _same_weights(a: Path, b: Path):
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), k


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):  # noqa: F811
    """The uninterrupted run (8 steps across the unfreeze)."""
    out = tmp_path_factory.mktemp("stop_ref") / "run"
    res = _run(_cmd(shards, out, opts=OPTS))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(shards, reference, tmp_path, sig):
    out = tmp_path / "run"
    proc = _start(_cmd(shards, out, opts=OPTS))
    _wait_for(_step_done(out, 2 if sig == signal.SIGTERM else 5), proc, "the step to stop after")  # frozen / unfrozen
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal sends to the foreground job on Ctrl-C
    else:
        proc.send_signal(sig)  # what a scheduler sends
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-3000:]
    line = _last_line(err)
    ckpt = torch.load(out / "latest.pth", weights_only=True)
    step = ckpt["global_step"]
    assert 2 <= step < 8 and ckpt["epoch_step"] == step % 4 and ckpt["epoch"] == step // 4
    assert line.endswith(shlex.join(_cmd(shards, out, "--resume", opts=OPTS)[2:])), line
    assert (f"stopped by {sig.name} at global step {step} (epoch {step // 4 + 1}, batch {step % 4}/4): "
            f"saved {out / 'latest.pth'}; continue with: python ") in line, line
    assert [r["step"] for r in _records(out)] == list(range(1, step + 1))  # every finished step recorded
    assert "stopped by" in (out / "train.log").read_text()

    resume = shlex.split(line.split("continue with: ", 1)[1])
    res = _run([sys.executable, *resume[1:]])
    assert res.returncode == 0, res.stderr[-3000:]
    assert _without_timing(_records(out)) == _without_timing(_records(reference))
    _same_weights(out / "checkpoint_e2.pth", reference / "checkpoint_e2.pth")


def test_no_checkpoint_yet_then_a_fresh_start_in_the_same_folder(shards, reference, tmp_path):
    """SIGTERM while the trainer is being built: nothing trained, no checkpoint, exit 143, and the
    same command starts afresh. Then SIGKILL (no chance to save) at step 2 of 4 with checkpoints
    only at epoch ends: metrics records and no checkpoint; the same command starts afresh again,
    drops those records, takes over the killed run's lock record and trains what the
    uninterrupted run trained."""
    out = tmp_path / "run"
    proc = _start(_cmd(shards, out, opts=OPTS))
    _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc, "the SIGTERM handler")
    proc.send_signal(signal.SIGTERM)  # while the trainer is being built: model, shards, DALI graph
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert _last_line(err).endswith("stopped by SIGTERM at global step 0 (epoch 1, batch 0/4): nothing trained, "
                                    "no checkpoint; rerun the same command to start again")
    assert not list(out.glob("*.pth")) and not _records(out)

    proc = _start(_cmd(shards, out, opts=OPTS))
    _wait_for(_step_done(out, 2), proc, "step 2")
    proc.kill()
    proc.communicate()
    assert _records(out) and not list(out.glob("*.pth"))
    res = _run(_cmd(shards, out, opts=OPTS))
    assert res.returncode == 0, res.stderr[-3000:]
    assert _without_timing(_records(out)) == _without_timing(_records(reference))
    log = (out / "train.log").read_text()
    assert f"taking over from a run that ended without releasing it (pid {proc.pid} on {socket.gethostname()}" in log
    assert "metrics.jsonl: dropped" in log


def _worker_pids(launcher_pid: int) -> dict:
    """{RANK: pid} of torchrun's worker processes."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def test_ddp_rank_signalled_alone_stops_every_rank_at_the_same_step(shards, tmp_path):
    """torchrun, 2 ranks on gloo; SIGTERM reaches rank 1 only. Both ranks stop after the same step
    (no rank left waiting in a collective), rank 0 saves it and names it, the resumed run trains
    the rest: every step once, on both ranks."""
    out = tmp_path / "ddp"
    opts = OPTS + ["TRAIN.RECORD_BATCHES=True", "DATASET.VIDEOS_PER_EPOCH=24"]  # 2 epochs x 3 steps
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = _start(torchrun + _cmd(shards, out, opts=opts)[1:])
    _wait_for(_step_done(out, 1), proc, "step 1")
    ranks = _worker_pids(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun reports its workers' exit status 143
    ckpt = torch.load(out / "latest.pth", weights_only=True)
    step = ckpt["global_step"]
    assert 1 <= step < 6 and ckpt["world_size"] == 2
    lines = [x for x in err.splitlines() if "stopped by SIGTERM" in x]
    assert len(lines) == 1 and f"at global step {step} " in lines[0] and "torchrun --nproc_per_node=2 " in lines[0]
    for rank in (0, 1):  # each rank's last step is the saved one
        recs = [json.loads(x) for x in (out / f"batches_rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == list(range(step)), rank

    res = _run(torchrun + _cmd(shards, out, "--resume", opts=opts)[1:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in _records(out)] == list(range(1, 7))
    for rank in (0, 1):
        recs = [json.loads(x) for x in (out / f"batches_rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == list(range(6)), rank


def test_one_training_run_per_run_folder(shards, reference, tmp_path):
    """A second run into the folder, or a --resume of it, while the first trains: one line naming
    the holder, nothing in the folder touched; the first run ends as if alone."""
    out = tmp_path / "run"
    first = _start(_cmd(shards, out, opts=OPTS))
    _wait_for(_step_done(out, 1), first, "step 1")
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, lock taken
    try:
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        for extra in ((), ("--resume",), ("--overwrite",)):
            res = _run(_cmd(shards, out, *extra, opts=OPTS))
            assert res.returncode == 2, (extra, res.stderr[-3000:])
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, (extra, lines)
            assert lines[0].startswith(f"error: {out} is in use by another training run: pid {first.pid} on "
                                       f"{socket.gethostname()}, started "), lines[0]
            assert "command: " in lines[0] and "train/run.py" in lines[0] and "--out " + str(out) in lines[0]
            assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, extra
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert _without_timing(_records(out)) == _without_timing(_records(reference))
    assert (out / "run.lock").read_text() == ""  # released: nothing left to take over


def _damaged_copy(shards, root, every: int = 1, kinds=("crc",)) -> Path:
    """A copy of the shards with every `every`-th VID crop damaged, the kinds taking turns: 'crc'
    (bytes that fail their checksum) or 'size' (a complete JPEG of another size, its checksum
    recorded as if it had been built so)."""
    shutil.copytree(shards, root)
    folder = shard_dir(root, "VID")
    reader = ShardReader(folder)
    _, small = cv2.imencode(".jpg", np.full((64, 64, 3), 127, np.uint8))
    for i, e in enumerate(range(0, len(reader), every)):
        if kinds[i % len(kinds)] == "crc":
            _corrupt(folder, reader, e, b"\xff\xd8 not a jpeg any more")
        else:
            _corrupt(folder, reader, e, fit_jpeg(small.tobytes(), int(reader.entry_length[e])), vouch=True)
    reader.close()
    release_read_env(folder)
    return folder


def test_no_usable_crop_is_one_line_and_the_folder_takes_a_rerun(shards, tmp_path):
    """Every crop unusable, half failing their checksum and half of the wrong size: one line, the
    first unusable crops named in train.log; with the shards repaired, a plain start in the same
    folder trains."""
    root = tmp_path / "cache"
    folder = _damaged_copy(shards, root, kinds=("crc", "size"))
    out = tmp_path / "run"
    res = _run(_cmd(root, out, opts=OPTS))
    assert res.returncode == 1, res.stderr[-3000:]
    line = _last_line(res.stderr)
    assert line.startswith("error: no usable crops: epoch 0 index ") and f"{folder}/shard-00000 (" in line, line
    assert f"python tools/build_lmdb.py --dataset VID --out {root} --verify-only" in line, line
    log = (out / "train.log").read_text()
    listed = [x for x in log.splitlines() if "unusable crop, skipped" in x]
    assert len(listed) == 20, listed  # ten of each kind of fault, then only counted
    assert sum(x.endswith("further ones (stored bytes) are counted, not listed") for x in listed) == 1
    assert sum(x.endswith("further ones (not a crop) are counted, not listed") for x in listed) == 1
    assert "checksum" in log and "crop is 64x64 px, the shard's crop size is 511x511" in log

    shutil.rmtree(folder)  # the shards repaired (rebuilt), then a plain start in the same folder
    shutil.copytree(shard_dir(shards, "VID"), folder)
    summary = Trainer(_cfg(*OPTS), shards=root, out_dir=out, device="cpu", show_progress=False).fit()
    assert summary["global_step"] == 8 and summary["replaced_crops"] == 0


def test_too_many_replaced_crops_stop_the_run_naming_the_shards(shards, tmp_path):
    """A third of the crops damaged, TRAIN.MAX_REPLACED_FRAC at its default (1% of an epoch's
    pairs): the run stops in its first epoch with the damaged shard named and latest.pth saved;
    without the ceiling (-1) the same data trains through."""
    root = tmp_path / "cache"
    folder = _damaged_copy(shards, root, every=3)
    out = tmp_path / "run"
    with pytest.raises(RunStopped) as stopped:
        Trainer(_cfg(*OPTS), shards=root, out_dir=out, device="cpu", show_progress=False).fit()
    ckpt = torch.load(out / "latest.pth", weights_only=True)
    step = ckpt["global_step"]
    assert 1 <= step <= 4 and ckpt["loader"]["epoch_skipped"] > 0.01 * 16
    line = str(stopped.value)
    where = f"(epoch {ckpt['epoch'] + 1}, batch {ckpt['epoch_step']}/4)"
    assert line.startswith(f"stopped at global step {step} {where}: this epoch drew {ckpt['loader']['epoch_skipped']} "
                           f"replacement pairs for unusable crops, more than TRAIN.MAX_REPLACED_FRAC=0.01 of its 16 "
                           f"pairs; damaged shards: {folder}/shard-00000 ("), line
    assert f"python tools/build_lmdb.py --dataset VID --out {root} --verify-only" in line
    assert f"saved {out / 'latest.pth'}; repair the shards, then continue with: python " in line
    assert line in (out / "train.log").read_text()
    summary = Trainer(_cfg(*OPTS, "TRAIN.MAX_REPLACED_FRAC=-1"), shards=root, out_dir=out, device="cpu",
                      show_progress=False, resume=True).fit()
    assert summary["global_step"] == 8 and summary["replaced_crops"] > 0
