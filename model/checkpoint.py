"""Loading weights into models, with PySOT's ``load_pretrain`` conventions.

* ``load_pretrained(module, path_or_state_dict)``: partial loading, e.g. ImageNet weights into
  ``model.backbone`` or PySOT model files into a whole model. Unwraps ``{'state_dict': ...}``
  (PySOT snapshots) or ``{'model': ...}``, strips ``module.`` (DDP) and ``_orig_mod.``
  (torch.compile) prefixes, and if no key matches retries with a ``features.`` prefix as PySOT
  does. Returns a :class:`LoadReport` and logs missing / unused keys; ``num_batches_tracked``
  buffers are ignored in both lists (old checkpoints lack them).
* ``load_model_checkpoint(model, path)``: whole-model strict loading (our own or PySOT's
  snapshots); raises ValueError naming the file and the mismatching keys/shapes.

Files are read with ``torch.load(path, map_location='cpu', weights_only=True)``.
"""
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ['LoadReport', 'load_pretrained', 'load_model_checkpoint', 'read_state_dict',
           'unwrap_model']

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ('module.', '_orig_mod.')
WRAPPER_KEYS = ('state_dict', 'model')
SHOW = 8  # how many keys error messages and logs list


@dataclass
class LoadReport:
    """What a load did. Key lists are sorted and exclude ``num_batches_tracked`` buffers."""
    source: str
    used: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    prefix_added: str = ''

    def __str__(self):
        # Without the source, so callers can write f'loaded {path}: {report}'.
        text = (f'{len(self.used)} keys used, {len(self.missing)} missing, '
                f'{len(self.unused)} unused')
        if self.prefix_added:
            text += f" (checkpoint keys prefixed with '{self.prefix_added}')"
        if self.missing:
            text += f'\n  missing: {_sample(self.missing, SHOW)}'
        if self.unused:
            text += f'\n  unused: {_sample(self.unused, SHOW)}'
        return text


def _sample(keys, n):
    keys = list(keys)
    return ', '.join(keys[:n]) + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')


def _strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def read_state_dict(path_or_state_dict, source: str = '') -> dict:
    """A clean ``{key: tensor}`` dict from a file path or an in-memory (wrapped) state dict."""
    if isinstance(path_or_state_dict, Mapping):
        obj, source = path_or_state_dict, source or '<state_dict>'
    else:
        path = Path(path_or_state_dict)
        source = source or str(path)
        if not path.is_file():
            raise FileNotFoundError(f'checkpoint file not found: {path}')
        try:
            obj = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as exc:
            raise ValueError(f'cannot read checkpoint {path} as a weights-only torch file: '
                             f'{exc}') from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f'{source}: expected a state dict, got {type(obj).__name__}')
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'{source}: not a state dict, non-tensor entries: {_sample(bad, SHOW)}')
    return {_strip_wrapper_prefixes(k): v for k, v in obj.items()}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod') and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _is_counter(key: str) -> bool:
    return key.endswith('num_batches_tracked')


def _match(model_sd: dict, ckpt: dict, source: str, prefix: str) -> LoadReport:
    model_keys, ckpt_keys = set(model_sd), set(ckpt)
    return LoadReport(
        source=source,
        used=sorted(model_keys & ckpt_keys),
        missing=sorted(k for k in model_keys - ckpt_keys if not _is_counter(k)),
        unused=sorted(k for k in ckpt_keys - model_keys if not _is_counter(k)),
        prefix_added=prefix,
    )


def _load(module: nn.Module, ckpt: dict, source: str, strict: bool,
          try_features_prefix: bool) -> LoadReport:
    model_sd = module.state_dict()
    report = _match(model_sd, ckpt, source, '')
    if not report.used and try_features_prefix:
        prefixed = {'features.' + k: v for k, v in ckpt.items()}
        retry = _match(model_sd, prefixed, source, 'features.')
        if retry.used:
            ckpt, report = prefixed, retry
    if not report.used:
        raise ValueError(f'{source}: no checkpoint key matches the {type(module).__name__} '
                         f'(also tried a features. prefix: {try_features_prefix}). Checkpoint '
                         f'keys: {_sample(sorted(ckpt), 5)}; model keys: '
                         f'{_sample(sorted(model_sd), 5)}')
    wrong_shape = [f'{k} {tuple(ckpt[k].shape)} vs model {tuple(model_sd[k].shape)}'
                   for k in report.used if ckpt[k].shape != model_sd[k].shape]
    if wrong_shape or (strict and (report.missing or report.unused)):
        problems = []
        if wrong_shape:
            problems.append(f'{len(wrong_shape)} shape mismatches: {_sample(wrong_shape, SHOW)}')
        if strict and report.missing:
            problems.append(f'{len(report.missing)} keys missing from the checkpoint: '
                            f'{_sample(report.missing, SHOW)}')
        if strict and report.unused:
            problems.append(f'{len(report.unused)} unexpected checkpoint keys: '
                            f'{_sample(report.unused, SHOW)}')
        raise ValueError(f'{source} does not fit this {type(module).__name__} (another '
                         f'architecture or config?):\n  ' + '\n  '.join(problems))
    module.load_state_dict(ckpt, strict=False)
    log = logger.warning if (report.missing or report.unused) else logger.info
    log('loaded %s: %s', source, report)
    return report


def load_pretrained(module: nn.Module, path_or_state_dict, strict: bool = False) -> LoadReport:
    """Load matching weights into ``module`` the way PySOT's ``load_pretrain`` does.

    Raises ValueError naming the source when no key matches (even with a ``features.``
    prefix), when a matching key has another shape, or — with ``strict`` — when any key is
    missing or unused (``num_batches_tracked`` excepted)."""
    source = '' if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    ckpt = read_state_dict(path_or_state_dict, source)
    return _load(unwrap_model(module), ckpt, source or '<state_dict>', strict,
                 try_features_prefix=True)


def load_model_checkpoint(model: nn.Module, path) -> LoadReport:
    """Strictly load a whole-model checkpoint (``model`` may be DDP- or compile-wrapped).

    Accepts plain state dicts and ``{'state_dict'|'model': ...}`` snapshots, with or without
    ``module.`` prefixes; raises ValueError naming the file and the mismatched keys/shapes."""
    ckpt = read_state_dict(path)
    return _load(unwrap_model(model), ckpt, str(path), strict=True, try_features_prefix=False)
