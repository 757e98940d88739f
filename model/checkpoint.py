"""Loading weights into models, with PySOT's ``load_pretrain`` conventions.

* ``load_pretrained(module, path_or_state_dict)``: partial loading, e.g. ImageNet weights into
  ``model.backbone`` or PySOT model files into a whole model. Unwraps ``{'state_dict': ...}``
  (PySOT snapshots) or ``{'model': ...}``, strips ``module.`` (DDP) and ``_orig_mod.``
  (torch.compile) prefixes, and if no key matches retries with a ``features.`` prefix as PySOT
  does. Returns a :class:`LoadReport` and logs missing / unused keys; ``num_batches_tracked``
  buffers are ignored in both lists (old checkpoints lack them).
* ``load_model_checkpoint(model, path)``: whole-model strict loading (our own or PySOT's
  snapshots); raises CheckpointError (a ValueError) naming the file and the mismatching
  keys/shapes.
* ``load_weights_only(path)``: the project's one reader of checkpoint files (``train/`` uses it
  too). It reads with ``torch.load(path, map_location='cpu', weights_only=True)`` and turns every
  failure into a one-line :class:`CheckpointError` that names the file and says what is wrong
  (missing, empty, not a torch file, damaged, or holding objects a weights-only load refuses)
  instead of torch's text, which suggests turning the safe load off.
"""
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ['LoadReport', 'load_pretrained', 'load_model_checkpoint', 'read_state_dict',
           'unwrap_model', 'load_weights_only', 'CheckpointError', 'CheckpointNotFoundError']

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ('module.', '_orig_mod.')
WRAPPER_KEYS = ('state_dict', 'model')
SHOW = 8  # how many keys error messages and logs list
# First bytes of what torch.save writes: a zip archive (torch >= 1.6) or a legacy pickle (protocol >= 2).
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_MAGIC = b'\x80'


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def _refused_global(message: str) -> str:
    """The class a weights-only load refused, from torch's message ('' if it names none)."""
    m = re.search(r'GLOBAL ([\w.]+)', message) or re.search(r'global ([\w.]+)', message)
    return m.group(1) if m else ''


def load_weights_only(path) -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors.

    Raises :class:`CheckpointNotFoundError` for a missing file and :class:`CheckpointError`
    for anything else that stops the load; the message names the file and never repeats
    torch's advice to load unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'checkpoint not found: {path}')
    try:
        with open(path, 'rb') as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise CheckpointError(f'cannot read checkpoint {path}: {err.strerror}') from None
    if not head:
        raise CheckpointError(f'{path} is empty: not a torch checkpoint')
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(f'{path} is not a torch checkpoint (it starts with {head!r}; torch.save '
                              f'writes a zip archive)')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if 'weights only' in str(err).lower() or refused:
            what = f' ({refused})' if refused else ''
            raise CheckpointError(f'{path} holds Python objects{what} that a safe weights-only load '
                                  f'refuses: only tensors, numbers, strings and plain containers '
                                  f'are read') from None
        raise CheckpointError(f'{path} is not a readable torch checkpoint (damaged pickle data)') from None
    except Exception as err:  # zip or pickle structure broken: truncated copy, overwritten bytes
        first = str(err).split('\n', 1)[0].split('. ', 1)[0].strip()
        detail = f': {first}' if first and 'weights_only' not in first else ''
        raise CheckpointError(f'{path} is a damaged or truncated torch checkpoint{detail}') from None


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
        source = source or str(path_or_state_dict)
        obj = load_weights_only(path_or_state_dict)
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{source}: expected a state dict, got {type(obj).__name__}')
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{source}: not a state dict, non-tensor entries: {_sample(bad, SHOW)}')
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
        raise CheckpointError(f'{source}: no checkpoint key matches the {type(module).__name__} '
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
        raise CheckpointError(f'{source} does not fit this {type(module).__name__} (another '
                         f'architecture or config?):\n  ' + '\n  '.join(problems))
    module.load_state_dict(ckpt, strict=False)
    log = logger.warning if (report.missing or report.unused) else logger.info
    log('loaded %s: %s', source, report)
    return report


def load_pretrained(module: nn.Module, path_or_state_dict, strict: bool = False) -> LoadReport:
    """Load matching weights into ``module`` the way PySOT's ``load_pretrain`` does.

    Raises CheckpointError (a ValueError) naming the source when no key matches (even with a ``features.``
    prefix), when a matching key has another shape, or — with ``strict`` — when any key is
    missing or unused (``num_batches_tracked`` excepted)."""
    source = '' if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    ckpt = read_state_dict(path_or_state_dict, source)
    return _load(unwrap_model(module), ckpt, source or '<state_dict>', strict,
                 try_features_prefix=True)


def load_model_checkpoint(model: nn.Module, path) -> LoadReport:
    """Strictly load a whole-model checkpoint (``model`` may be DDP- or compile-wrapped).

    Accepts plain state dicts and ``{'state_dict'|'model': ...}`` snapshots, with or without
    ``module.`` prefixes; raises CheckpointError (a ValueError) naming the file and the
    mismatched keys/shapes (CheckpointNotFoundError, also a FileNotFoundError, if it is missing)."""
    ckpt = read_state_dict(path)
    return _load(unwrap_model(model), ckpt, str(path), strict=True, try_features_prefix=False)
