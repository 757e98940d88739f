"""What every evaluation tool does before it tracks: the snapshots its command line names (files,
and a run folder's `checkpoint_e*.pth`), the config to build them with (the given YAML, else the
one our training saved in the first snapshot), the torch threads and the device.  One answer for
tools/eval.py, eval_vot.py, tune.py, trax_tracker.py and bench_eval.py.

It lives in train/ because the config schema and the config saved in a checkpoint are train's;
track/ receives the resulting config as an argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from track.snapshots import epoch_checkpoints

from .checkpoint import load_checkpoint
from .config import ConfigNode, config_from_dict, load_config


@dataclass(frozen=True)
class EvalSetup:
    """The snapshots (resolved paths, each once, in the order named), the config (None when no
    network is named) and the device ('cpu' | 'cuda...')."""
    snapshots: list
    cfg: ConfigNode | None
    device: str


def saved_config(snapshot, overrides=()) -> ConfigNode:
    """The config train/run.py saved in `snapshot`, with `overrides`; a ValueError naming the file
    when it carries none (a PySOT checkpoint)."""
    ckpt = load_checkpoint(snapshot)  # CheckpointError (a ValueError) names the file
    saved = ckpt.get('config')
    if not isinstance(saved, dict):
        raise ValueError(f'{snapshot} carries no config (a PySOT checkpoint?): give --cfg')
    return config_from_dict(saved, f'{snapshot}:config', overrides)


def eval_setup(cfg=None, overrides=(), snapshots=(), run_folder=None, device=None, threads: int = 0,
               log=print) -> EvalSetup:
    """Snapshots = `snapshots` + every `checkpoint_e*.pth` of `run_folder`; config = the YAML
    `cfg` with `overrides`, else the one saved in the first snapshot, else None; `threads` > 0
    sets torch's CPU threads; device = `device`, else 'cuda' when the config asks for CUDA and
    it is there, else 'cpu'."""
    named = [Path(p) for p in snapshots] + (epoch_checkpoints(run_folder) if run_folder else [])
    if cfg:
        config = load_config(cfg, overrides=overrides)
    elif named:
        config = saved_config(named[0], overrides)
        log(f'using the config saved in {named[0]}')
    else:
        config = None
    if threads:
        torch.set_num_threads(threads)
    device = device or ('cuda' if config is not None and config.CUDA and torch.cuda.is_available() else 'cpu')
    return EvalSetup(list(dict.fromkeys(p.resolve() for p in named)), config, device)
