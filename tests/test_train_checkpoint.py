"""Checkpoint file handling: atomic replacement, weights_only loading, RNG round trip."""
import os
import random

import numpy as np
import pytest
import torch

from train.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint, to_plain


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
