"""Trackers from checkpoints: the snapshots of a run folder, short display names, a model
loaded from a snapshot, and {name: tracker} for snapshots plus the baselines (static: never
moves; untrained: the network at random init)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from model import build_model
from model.checkpoint import load_model_checkpoint
from track.tracker import StaticTracker, build_tracker

BASELINES = ('static', 'untrained')
_EPOCH_RE = re.compile(r'checkpoint_e(\d+)\.pth$')


def epoch_checkpoints(run_dir) -> list:
    """`checkpoint_e<N>.pth` files of a run directory, sorted by epoch N."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'run directory not found: {run_dir}')
    found = sorted((int(m.group(1)), p) for p in run_dir.rglob('checkpoint_e*.pth')
                   if (m := _EPOCH_RE.search(p.name)))
    if not found:
        raise FileNotFoundError(f'no checkpoint_e*.pth files under {run_dir}')
    return [p for _, p in found]


def snapshot_names(paths) -> list:
    """Short unique display names: the file stem, prefixed by its folder when stems clash."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    return [f'{p.parent.name}/{p.stem}' if stems.count(p.stem) > 1 else p.stem for p in paths]


def load_snapshot(cfg, path, device='cpu') -> torch.nn.Module:
    """A model built from `cfg` with a checkpoint strictly loaded (PySOT `{'state_dict': ...}`
    or bare state dict, `module.` prefixes allowed), in eval mode on `device`."""
    model = build_model(cfg)
    load_model_checkpoint(model, path)
    return model.to(device).eval()


def make_trackers(cfg, snapshots=(), baselines=(), device='cpu', seed: int = 0) -> dict:
    """{display name: tracker} for the given snapshots and baselines (static | untrained)."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f'unknown baseline(s) {unknown}; expected some of {BASELINES}')
    if (snapshots or 'untrained' in baselines) and cfg is None:
        raise ValueError('a config (--cfg) is needed to build the network')
    trackers = {}
    snapshots = list(dict.fromkeys(Path(p).resolve() for p in snapshots))  # same file once
    for name, path in zip(snapshot_names(snapshots), snapshots):
        trackers[name] = build_tracker(cfg, load_snapshot(cfg, path, device))
    if 'untrained' in baselines:
        torch.manual_seed(seed)  # same random init every run
        trackers['untrained'] = build_tracker(cfg, build_model(cfg).to(device).eval())
    if 'static' in baselines:
        trackers['static'] = StaticTracker()
    return trackers
