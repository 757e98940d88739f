"""Experiment configuration: PySOT's YAML schema, defaults and checks, without a global singleton.

`load_config(path, overrides)` returns an immutable :class:`ConfigNode` tree. Section and key
names, and the defaults used where a file is silent, are PySOT's (``pysot/core/config.py``), so
PySOT's experiment files load unchanged. Keys this project adds are listed in ``_OUR_DEFAULTS``.

Callers receive the node explicitly; ``pipeline/`` and ``model/`` only read attributes from it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["ConfigError", "ConfigNode", "load_config", "config_from_dict", "default_config"]

# Sections whose children are free-form (PySOT declares them new_allowed): any key, any type.
_FREE_FORM = ("KWARGS",)


def _dataset_section(root: str, anno: str, frame_range: int, num_use: int) -> dict:
    return {"ROOT": root, "ANNO": anno, "FRAME_RANGE": frame_range, "NUM_USE": num_use}


_PYSOT_DEFAULTS: dict[str, Any] = {
    "META_ARC": "siamrpn_r50_l234_dwxcorr",
    "CUDA": True,
    "TRAIN": {
        "THR_HIGH": 0.6,
        "THR_LOW": 0.3,
        "NEG_NUM": 16,
        "POS_NUM": 16,
        "TOTAL_NUM": 64,
        "EXEMPLAR_SIZE": 127,
        "SEARCH_SIZE": 255,
        "BASE_SIZE": 8,
        "OUTPUT_SIZE": 25,
        "RESUME": "",
        "PRETRAINED": "",
        "LOG_DIR": "./logs",
        "SNAPSHOT_DIR": "./snapshot",
        "EPOCH": 20,
        "START_EPOCH": 0,
        "BATCH_SIZE": 32,
        "NUM_WORKERS": 1,
        "MOMENTUM": 0.9,
        "WEIGHT_DECAY": 0.0001,
        "CLS_WEIGHT": 1.0,
        "LOC_WEIGHT": 1.2,
        "MASK_WEIGHT": 1,
        "PRINT_FREQ": 20,
        "LOG_GRADS": False,
        "GRAD_CLIP": 10.0,
        "BASE_LR": 0.005,
        "LR": {"TYPE": "log", "KWARGS": {}},
        "LR_WARMUP": {"WARMUP": True, "TYPE": "step", "EPOCH": 5, "KWARGS": {}},
    },
    "DATASET": {
        "TEMPLATE": {"SHIFT": 4, "SCALE": 0.05, "BLUR": 0.0, "FLIP": 0.0, "COLOR": 1.0},
        "SEARCH": {"SHIFT": 64, "SCALE": 0.18, "BLUR": 0.0, "FLIP": 0.0, "COLOR": 1.0},
        "NEG": 0.2,
        "GRAY": 0.0,
        "NAMES": ["VID", "COCO", "DET", "YOUTUBEBB"],
        "VID": _dataset_section("training_dataset/vid/crop511", "training_dataset/vid/train.json", 100, 100000),
        "YOUTUBEBB": _dataset_section("training_dataset/yt_bb/crop511", "training_dataset/yt_bb/train.json", 3, -1),
        "COCO": _dataset_section("training_dataset/coco/crop511", "training_dataset/coco/train2017.json", 1, -1),
        "DET": _dataset_section("training_dataset/det/crop511", "training_dataset/det/train.json", 1, -1),
        "VIDEOS_PER_EPOCH": 600000,
    },
    "BACKBONE": {
        "TYPE": "res50",
        "KWARGS": {},
        "PRETRAINED": "",
        "TRAIN_LAYERS": ["layer2", "layer3", "layer4"],
        "LAYERS_LR": 0.1,
        "TRAIN_EPOCH": 10,
    },
    "ADJUST": {"ADJUST": True, "KWARGS": {}, "TYPE": "AdjustAllLayer"},
    "RPN": {"TYPE": "MultiRPN", "KWARGS": {}},
    "MASK": {"MASK": False, "TYPE": "MaskCorr", "KWARGS": {}},
    "REFINE": {"REFINE": False, "TYPE": "Refine"},
    "ANCHOR": {"STRIDE": 8, "RATIOS": [0.33, 0.5, 1, 2, 3], "SCALES": [8], "ANCHOR_NUM": 5},
    "TRACK": {
        "TYPE": "SiamRPNTracker",
        "PENALTY_K": 0.04,
        "WINDOW_INFLUENCE": 0.44,
        "LR": 0.4,
        "EXEMPLAR_SIZE": 127,
        "INSTANCE_SIZE": 255,
        "BASE_SIZE": 8,
        "CONTEXT_AMOUNT": 0.5,
        "LOST_INSTANCE_SIZE": 831,
        "CONFIDENCE_LOW": 0.85,
        "CONFIDENCE_HIGH": 0.998,
        "MASK_THERSHOLD": 0.30,  # PySOT's spelling, kept so its files load
        "MASK_OUTPUT_SIZE": 127,
    },
}

# Keys this project adds to PySOT's schema (merged over the defaults above). One line each.
_OUR_DEFAULTS: dict[str, Any] = {
    "DATASET": {
        # GOT-10k and LaSOT, as PySOT's sibling siamban configures them (not in PySOT's NAMES default).
        "GOT10K": _dataset_section("training_dataset/got10k/crop511", "training_dataset/got10k/train.json", 100, 100000),
        "LASOT": _dataset_section("training_dataset/lasot/crop511", "training_dataset/lasot/train.json", 100, 100000),
    },
    "TRAIN": {
        "SEED": 123456,  # PySOT's --seed default; every rank seeds the same, the loader offsets by rank
        "CKPT_INTERVAL": 500,  # steps between latest.pth saves (0: only at epoch ends); checkpoint_e{N} every epoch
        "GRAD_SUM": True,  # reproduce PySOT's summed (not averaged) DDP gradient: loss x world_size before backward
        "AMP": True,  # bf16 autocast on CUDA (ignored on CPU)
        "CHANNELS_LAST": True,  # channels_last memory format on CUDA (ignored on CPU)
        "COMPILE": False,  # torch.compile the model
        "LOADER_DEVICE": "",  # where the data pipeline runs: '' = the training device, or 'cpu' / 'cuda'
        "LOADER_READ_AHEAD": 8,  # batches whose plans and crop reads run ahead of rendering (off the training thread)
        "LOADER_READ_THREADS": 8,  # concurrent crop readers per process (I/O-bound: measured cold/warm 0.88 with 4, 0.93 with 8 at 1M crops)
        # GPU defaults that leave the host's cores to training (docs/training.md, the GPU run):
        "LOADER_HW_DECODER_LOAD": -1.0,  # GPU loader: share of JPEGs for the hardware decoder; < 0: per card (1.0 on A100/H100/H200/..., else DALI's 0.65)
        "LOADER_DALI_THREADS": 0,  # DALI threads per process; 0: min(4, cores share) on the GPU path, cores share + 1 on the CPU path
        "CUDA_GRAPHS": False,  # with TRAIN.COMPILE on CUDA: torch.compile mode "reduce-overhead" (CUDA graphs of forward and backward)
        "RECORD_BATCHES": False,  # debug: write per-sample fingerprints to batches_rank{R}.jsonl in the run dir
        "RESET_MOMENTUM_EACH_EPOCH": False,  # SGD momentum restarts at every epoch (the SiamMask authors' refine stage rebuilds its optimizer each epoch)
        "LOSS_SINGLE_ANCHOR_QUIRK": True,  # PySOT's cls loss: a term with exactly 1 selected anchor in the batch is 0 (model/loss.py)
        # run reliability (docs/reliability.md)
        "MAX_REPLACED_FRAC": 0.01,  # stop when an epoch drew more replacement pairs (for unusable crops) than this share of its pairs (-1: no limit)
    },
    "REFINE": {"KWARGS": {}},  # Refine's channels (model/heads/mask.py); PySOT has none: ResNet-50's
    "BACKBONE": {
        # true: backbone BN stays in eval mode after the unfreeze too (the SiamMask authors' base stage never
        # switches unfrozen layers back to train mode); false: PySOT's build_opt_lr puts TRAIN_LAYERS' BN in train mode
        "FREEZE_BN": False,
    },
}

# Per-dataset section schema: a DATASET child with these keys is a dataset, whatever its name.
_DATASET_KEYS = ("ROOT", "ANNO", "FRAME_RANGE", "NUM_USE")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the source."""


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config_dict() -> dict:
    """PySOT's defaults plus this project's additions, as plain nested dicts."""
    return _merge(_PYSOT_DEFAULTS, _OUR_DEFAULTS)


class ConfigNode(Mapping):
    """Immutable config section: attribute and item access, lists stored as tuples."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        frozen = {k: _freeze(v) for k, v in data.items()}
        object.__setattr__(self, "_data", frozen)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r} (keys: {sorted(self._data)})") from None

    def __setattr__(self, name, value):
        raise AttributeError("ConfigNode is immutable; use cfg.replace([...]) to derive a new config")

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"ConfigNode({self.to_dict()!r})"

    def __reduce__(self):  # picklable for multiprocessing workers (never used to store data)
        return (ConfigNode, (self.to_dict(),))

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (YAML/JSON/checkpoint friendly)."""
        return {k: _thaw(v) for k, v in self._data.items()}

    def replace(self, overrides: Iterable[str], source: str = "<overrides>") -> "ConfigNode":
        """A copy with ``KEY.SUB=value`` overrides applied and re-validated."""
        data = self.to_dict()
        _apply_overrides(data, list(overrides), source)
        _validate(data, source)
        return ConfigNode(data)


def _freeze(value):
    if isinstance(value, Mapping):
        return ConfigNode(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, ConfigNode):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _type_name(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list", dict: "section"}.get(
        type(value), type(value).__name__
    )


def _merge_checked(base: dict, extra: Mapping, prefix: str, source: str) -> None:
    """Merge ``extra`` into ``base`` in place, rejecting unknown keys and wrong types."""
    if not isinstance(extra, Mapping):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping of keys, got {_type_name(extra)}")
    for key, value in extra.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if prefix.split(".")[-1] in _FREE_FORM:
            base[key] = copy.deepcopy(value)
            continue
        if key not in base:
            if prefix == "DATASET" and isinstance(value, Mapping):
                # PySOT's DATASET section accepts new dataset sections (new_allowed).
                unknown = set(value) - set(_DATASET_KEYS)
                if unknown:
                    raise ConfigError(
                        f"{source}: unknown key(s) {sorted(unknown)} in dataset section {path} "
                        f"(allowed: {list(_DATASET_KEYS)})"
                    )
                base[key] = _merge(_dataset_section("", "", 100, -1), dict(value))
                continue
            raise ConfigError(f"{source}: unknown config key {path!r} (valid keys here: {sorted(base)})")
        default = base[key]
        if isinstance(default, dict):
            if value is None:
                continue
            _merge_checked(default, value, path, source)
            continue
        if value is None and isinstance(default, str):
            value = ""
        if isinstance(default, float) and isinstance(value, str):
            value = _float_or_same(value)  # PyYAML reads "1e9" (no dot) as a string
        if not _type_ok(default, value):
            raise ConfigError(
                f"{source}: key {path!r} expects {_type_name(default)} (default {default!r}), "
                f"got {_type_name(value)} {value!r}"
            )
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        base[key] = list(value) if isinstance(value, tuple) else value


def _float_or_same(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _parse_override(text: str, source: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"{source}: override {text!r} must look like KEY.SUB=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{source}: override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def _apply_overrides(data: dict, overrides: list[str], source: str) -> None:
    for text in overrides:
        keys, value = _parse_override(text, source)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge_checked(data, nested, "", f"{source} ({text!r})")


def _validate(data: dict, source: str) -> None:
    """Cross-key consistency checks, each naming the keys involved."""
    tr, an, ds = data["TRAIN"], data["ANCHOR"], data["DATASET"]
    stride = an["STRIDE"]
    if stride <= 0:
        raise ConfigError(f"{source}: ANCHOR.STRIDE must be positive, got {stride}")
    expected = (tr["SEARCH_SIZE"] - tr["EXEMPLAR_SIZE"]) / stride + 1 + tr["BASE_SIZE"]
    if not math.isclose(expected, tr["OUTPUT_SIZE"]):
        raise ConfigError(
            f"{source}: TRAIN.OUTPUT_SIZE={tr['OUTPUT_SIZE']} does not match "
            f"(TRAIN.SEARCH_SIZE-TRAIN.EXEMPLAR_SIZE)/ANCHOR.STRIDE+1+TRAIN.BASE_SIZE = "
            f"({tr['SEARCH_SIZE']}-{tr['EXEMPLAR_SIZE']})/{stride}+1+{tr['BASE_SIZE']} = {expected:g}"
        )
    n_anchor = len(an["RATIOS"]) * len(an["SCALES"])
    if an["ANCHOR_NUM"] != n_anchor:
        raise ConfigError(
            f"{source}: ANCHOR.ANCHOR_NUM={an['ANCHOR_NUM']} but len(ANCHOR.RATIOS)*len(ANCHOR.SCALES)={n_anchor}"
        )
    if not tr["THR_LOW"] <= tr["THR_HIGH"]:
        raise ConfigError(f"{source}: TRAIN.THR_LOW={tr['THR_LOW']} must not exceed TRAIN.THR_HIGH={tr['THR_HIGH']}")
    if not 0 <= tr["POS_NUM"] <= tr["TOTAL_NUM"]:
        raise ConfigError(f"{source}: TRAIN.POS_NUM={tr['POS_NUM']} must be within [0, TRAIN.TOTAL_NUM={tr['TOTAL_NUM']}]")
    if tr["CUDA_GRAPHS"] and not tr["COMPILE"]:
        raise ConfigError(f"{source}: TRAIN.CUDA_GRAPHS=True needs TRAIN.COMPILE=True (the graphs are torch.compile's "
                          f"reduce-overhead mode)")
    if tr["LOADER_HW_DECODER_LOAD"] > 1 or tr["LOADER_DALI_THREADS"] < 0:
        raise ConfigError(f"{source}: TRAIN.LOADER_HW_DECODER_LOAD={tr['LOADER_HW_DECODER_LOAD']} must be <= 1 "
                          f"(< 0: per card) and TRAIN.LOADER_DALI_THREADS={tr['LOADER_DALI_THREADS']} >= 0 (0: auto)")
    if tr["BATCH_SIZE"] < 1:
        raise ConfigError(f"{source}: TRAIN.BATCH_SIZE must be at least 1, got {tr['BATCH_SIZE']}")
    if tr["MAX_REPLACED_FRAC"] < 0 and tr["MAX_REPLACED_FRAC"] != -1:
        raise ConfigError(f"{source}: TRAIN.MAX_REPLACED_FRAC={tr['MAX_REPLACED_FRAC']} must be a share of an epoch's "
                          f"pairs (>= 0) or -1 (no limit)")
    for key in ("NEG", "GRAY"):
        if not 0.0 <= ds[key] <= 1.0:
            raise ConfigError(f"{source}: DATASET.{key}={ds[key]} is a probability and must lie in [0, 1]")
    for side in ("TEMPLATE", "SEARCH"):
        for key in ("BLUR", "FLIP", "COLOR"):
            p = ds[side][key]
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{source}: DATASET.{side}.{key}={p} is a probability and must lie in [0, 1]")
    for name in ds["NAMES"]:
        if not isinstance(name, str) or not isinstance(ds.get(name), dict) or name in ("TEMPLATE", "SEARCH"):
            raise ConfigError(
                f"{source}: DATASET.NAMES lists {name!r} but there is no dataset section DATASET.{name}"
            )
        if ds[name]["NUM_USE"] == 0 or ds[name]["NUM_USE"] < -1:
            raise ConfigError(f"{source}: DATASET.{name}.NUM_USE={ds[name]['NUM_USE']} must be -1 (all) or positive")


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line: 'FILE:LINE:COLUMN: not valid YAML: what the parser expected'."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = " ".join(str(getattr(err, "problem", None) or err).split())
    context, begun = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and begun is not None and mark is not None and begun.line != mark.line:
        context += f" begun at line {begun.line + 1}"
    return f"{where}: not valid YAML: {what}" + (f" ({' '.join(context.split())})" if context else "")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ConfigNode:
    """Load a PySOT-schema YAML experiment file (or the defaults when ``path`` is None).

    ``overrides`` are ``"SECTION.KEY=value"`` strings (value parsed as YAML), applied after the file.
    Raises :class:`ConfigError` naming the file and key for unknown keys, wrong types and
    inconsistent sizes.
    """
    if path is None:
        return config_from_dict({}, "<defaults>", overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    return config_from_dict({} if loaded is None else loaded, str(path), overrides)


def config_from_dict(data: Mapping, source: str = "<dict>", overrides: Iterable[str] = ()) -> ConfigNode:
    """A config from plain nested dicts (e.g. the ``config`` saved in a training checkpoint),
    checked exactly like a file named ``source``."""
    merged = default_config_dict()
    _merge_checked(merged, data, "", source)
    overrides = list(overrides)
    if overrides:
        _apply_overrides(merged, overrides, source)
    _validate(merged, source)
    return ConfigNode(merged)


def default_config() -> ConfigNode:
    """PySOT's defaults (plus this project's additions) as a ConfigNode."""
    return load_config(None)
