"""Heads of the Siamese trackers and their PySOT-name registries."""
from .mask import MaskCorr, Refine
from .rpn import DepthwiseRPN, DepthwiseXCorr, MultiRPN, UPChannelRPN
from .xcorr import xcorr_depthwise, xcorr_fast

__all__ = ['UPChannelRPN', 'DepthwiseXCorr', 'DepthwiseRPN', 'MultiRPN', 'MaskCorr', 'Refine',
           'xcorr_fast', 'xcorr_depthwise', 'get_rpn_head', 'get_mask_head', 'get_refine_head',
           'RPNS', 'MASKS', 'REFINES']

RPNS = {'UPChannelRPN': UPChannelRPN, 'DepthwiseRPN': DepthwiseRPN, 'MultiRPN': MultiRPN}
MASKS = {'MaskCorr': MaskCorr}
REFINES = {'Refine': Refine}


def _lookup(registry, name, key):
    if name not in registry:
        raise KeyError(f'unknown head type {name!r} ({key}); known: {sorted(registry)}')
    return registry[name]


def get_rpn_head(name, **kwargs):
    """Build the RPN head ``name`` (cfg.RPN.TYPE) with cfg.RPN.KWARGS."""
    return _lookup(RPNS, name, 'RPN.TYPE')(**kwargs)


def get_mask_head(name, **kwargs):
    """Build the mask head ``name`` (cfg.MASK.TYPE) with cfg.MASK.KWARGS."""
    return _lookup(MASKS, name, 'MASK.TYPE')(**kwargs)


def get_refine_head(name, **kwargs):
    """Build the refine head ``name`` (cfg.REFINE.TYPE) with cfg.REFINE.KWARGS (PySOT has none:
    empty, ResNet-50's channels)."""
    return _lookup(REFINES, name, 'REFINE.TYPE')(**kwargs)
