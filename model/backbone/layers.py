"""Argument checks shared by the backbones that return several intermediate layers."""


def check_used_layers(used_layers, count: int) -> list:
    """`used_layers` as a list, or ValueError unless it is a non-empty list of indices in 0..count-1."""
    used_layers = list(used_layers)
    bad = [i for i in used_layers if not (isinstance(i, int) and 0 <= i < count)]
    if not used_layers or bad:
        raise ValueError(f'used_layers must be a non-empty list of indices in 0..{count - 1}, got {used_layers}')
    return used_layers
