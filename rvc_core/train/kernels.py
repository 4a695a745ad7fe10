"""Which CPU convolution kernels the training step runs: oneDNN's or ATen's own.

oneDNN reorders every input, output and weight into its blocked layouts on each call. For RVC's
widths (up to 1024 channels) its kernels repay that: without it one full v2 40k step's convolutions
take 1.4x as long. For narrow networks the reorders and per-call set-up are most of the work, and
ATen's im2col + GEMM convolutions are faster: the tiny preset (16-channel discriminators) runs
about 1.5x as many steps per second without oneDNN (`bench/conv_kernels.py`, `bench/train.py`;
docs/performance.md has the numbers).

The switch is process-wide and read both when a convolution runs forward and when its backward
runs, so it must hold around the whole step; `train` sets it for the run and restores it after.
GPUs are not affected (cuDNN).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# The discriminator's widest convolution (output channels) from which oneDNN wins on the step as a
# whole. The discriminator is most of the step's work, and its width tells the presets apart: tiny
# (16) loses with oneDNN, full (1024) wins. Per layer, oneDNN won from 64 channels up in the decoder
# and lost below 16 (1x1 conditioning layers are too small to count).
ONEDNN_MIN_CHANNELS = 256


def widest_convolution(*networks: nn.Module) -> int:
    """The largest output-channel count of any convolution in `networks` (0 if none)."""
    from torch import nn

    widths = [
        module.out_channels
        for network in networks
        for module in network.modules()
        if isinstance(module, nn.modules.conv._ConvNd)
    ]
    return max(widths, default=0)


def use_onednn(device: str, discriminator: nn.Module, precision: str = "fp32") -> bool:
    """Whether the step on `device` should run oneDNN's convolutions (only CPU in fp32 ever says no:
    bf16 convolutions are fast only in oneDNN)."""
    if not device.startswith("cpu") or precision != "fp32":
        return True
    return widest_convolution(discriminator) >= ONEDNN_MIN_CHANNELS


@contextmanager
def convolution_kernels(device: str, discriminator: nn.Module, precision: str = "fp32") -> Iterator[bool]:
    """Runs the block with the kernels `use_onednn` picks for this model; yields the choice."""
    import torch

    wanted = use_onednn(device, discriminator, precision)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = before and wanted
    try:
        yield wanted
    finally:
        torch.backends.mkldnn.enabled = before
