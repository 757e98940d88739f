"""Checkpoint file handling: atomic replacement, weights_only loading, RNG round trip."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import (CheckpointError, capture_rng, load_checkpoint, remove_stale_temp_files, restore_rng,
                              save_checkpoint, to_plain)

ROOT = Path(__file__).resolve().parents[1]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "latest.pth"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temp file left behind


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    loader_state = to_plain({"idx": np.arange(3), "n": np.int64(4)})
    save_checkpoint(tmp_path / "c.pth", {"rng": capture_rng(), "loader": loader_state})
    expected = (random.random(), np.random.randn(), torch.rand(2))
    ckpt = load_checkpoint(tmp_path / "c.pth")
    restore_rng(ckpt["rng"])
    got = (random.random(), np.random.randn(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert ckpt["loader"]["n"] == 4 and torch.equal(ckpt["loader"]["idx"], torch.arange(3))


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_temp_file_of_a_killed_write_is_removed_and_live_ones_kept(tmp_path):
    """SIGKILL a process in the middle of save_checkpoint: its .latest.pth.tmp<pid> stays behind;
    remove_stale_temp_files deletes it and keeps a temp file of a live process and other files."""
    marker = tmp_path / "pickling"
    writer = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from train.checkpoint import save_checkpoint\n"
        "class Slow:\n"
        "    def __reduce__(self):\n"
        f"        Path({str(marker)!r}).touch()\n"
        "        time.sleep(60)\n"
        "        return (int, ())\n"
        f"save_checkpoint(Path({str(tmp_path)!r}) / 'latest.pth', {{'epoch': 2, 'slow': Slow()}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        t_end = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before the kill"
            assert time.monotonic() < t_end, "writer never started pickling"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stale = tmp_path / f".latest.pth.tmp{proc.pid}"
    assert stale.is_file()
    live = tmp_path / f".checkpoint_e1.pth.tmp{os.getpid()}"  # a write in progress in this (live) process
    live.write_bytes(b"partial")
    not_ours = tmp_path / f".notes.txt.tmp{proc.pid}"
    not_ours.write_bytes(b"x")
    save_checkpoint(tmp_path / "latest.pth", {"epoch": 1})

    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, not_ours.name, "latest.pth", "pickling"])
    assert load_checkpoint(tmp_path / "latest.pth")["epoch"] == 1
    assert remove_stale_temp_files(tmp_path / "missing") == []


@pytest.mark.parametrize("content", [b"", b"just some text\n"], ids=["empty", "text"])
def test_text_or_empty_checkpoint_is_one_clear_line(tmp_path, content):
    path = tmp_path / "latest.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "not a torch checkpoint" in msg and "\n" not in msg and "weights_only" not in msg


def test_disk_full_keeps_previous_checkpoint_and_says_so(small_disk):
    """A real small file system: the second checkpoint does not fit next to the first."""
    from train.checkpoint import DiskFullError

    payload = {"epoch": 1, "w": torch.arange(50_000, dtype=torch.float32)}  # ~200 kB
    mnt = small_disk(300 * 1024)
    save_checkpoint(mnt / "latest.pth", payload)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(mnt / "latest.pth", {**payload, "epoch": 2})
    assert str(err.value).startswith(f"no space left on {mnt}") and "Errno" not in str(err.value)
    assert load_checkpoint(mnt / "latest.pth")["epoch"] == 1
    assert os.listdir(mnt) == ["latest.pth"]  # the partial temp file is gone
