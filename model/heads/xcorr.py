"""Cross-correlation ops of the Siamese heads (behaviour of PySOT's ``pysot/core/xcorr.py``).

Both fold the batch into the channel dimension and run one grouped ``conv2d``, so every
sample is correlated with its own template kernel. ``reshape`` (not ``view``) is used so
channels_last inputs work; for contiguous NCHW tensors it is a free view.
"""
import torch
import torch.nn.functional as F

__all__ = ['xcorr_fast', 'xcorr_depthwise']


def xcorr_fast(search: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full (channel-summing) correlation of ``search`` (B,C,H,W) with ``kernel`` (B,K*C,h,w).

    Each sample's kernel holds K filters of C channels; the result is (B,K,H-h+1,W-w+1).
    """
    batch, channels = search.shape[0], search.shape[1]
    if kernel.shape[0] != batch or kernel.shape[1] % channels:
        raise ValueError(f'xcorr_fast: kernel {tuple(kernel.shape)} does not fit search '
                         f'{tuple(search.shape)} (need B equal and kernel channels a multiple of C)')
    filters = kernel.reshape(-1, channels, kernel.shape[2], kernel.shape[3])
    out = F.conv2d(search.reshape(1, batch * channels, search.shape[2], search.shape[3]),
                   filters, groups=batch)
    return out.reshape(batch, -1, out.shape[2], out.shape[3])


def xcorr_depthwise(search: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Channel-by-channel correlation of ``search`` (B,C,H,W) with ``kernel`` (B,C,h,w) → (B,C,H',W')."""
    batch, channels = kernel.shape[0], kernel.shape[1]
    if search.shape[0] != batch or search.shape[1] != channels:
        raise ValueError(f'xcorr_depthwise: search {tuple(search.shape)} and kernel '
                         f'{tuple(kernel.shape)} differ in batch or channels')
    out = F.conv2d(search.reshape(1, batch * channels, search.shape[2], search.shape[3]),
                   kernel.reshape(batch * channels, 1, kernel.shape[2], kernel.shape[3]),
                   groups=batch * channels)
    return out.reshape(batch, channels, out.shape[2], out.shape[3])
