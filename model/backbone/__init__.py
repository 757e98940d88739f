"""PySOT-compatible backbones, selected by name (``cfg.BACKBONE.TYPE``).

Every backbone exposes ``out_channels`` (list: channels of each returned feature map);
multi-output backbones (ResNets, MobileNetV2) return a list for several ``used_layers``
and a single tensor for one.
"""
import inspect

from .alexnet import alexnet, alexnetlegacy
from .mobilenet_v2 import mobilenetv2
from .resnet_atrous import resnet18, resnet34, resnet50

__all__ = ['BACKBONES', 'get_backbone']

BACKBONES = {
    'alexnetlegacy': alexnetlegacy,
    'mobilenetv2': mobilenetv2,
    'resnet18': resnet18,
    'resnet34': resnet34,
    'resnet50': resnet50,
    'alexnet': alexnet,
}


def get_backbone(name, **kwargs):
    """Build backbone ``name`` with ``kwargs`` (e.g. ``cfg.BACKBONE.KWARGS``).

    Raises ValueError for an unknown name (listing the valid ones) or an unknown keyword.
    """
    if name not in BACKBONES:
        hint = ''
        if name == 'res50':
            hint = (" ('res50' is PySOT's config default BACKBONE.TYPE, which no backbone is "
                    "registered under; set BACKBONE.TYPE to 'resnet50')")
        raise ValueError(f'unknown backbone {name!r}{hint}; valid names: {sorted(BACKBONES)}')
    factory = BACKBONES[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f'backbone {name!r} got unknown keyword(s) {unknown}; '
                         f'accepted: {accepted}')
    return factory(**kwargs)
