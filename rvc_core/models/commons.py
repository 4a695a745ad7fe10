"""Small tensor helpers shared by the model modules: masks, windows, padding, weight norm."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

LRELU_SLOPE = 0.1  # leaky-ReLU slope used throughout the decoder and discriminators

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class WeightNorm(nn.Module):
    """Weight norm over the output dim (dim 0) as a parametrization: weight = g * v / ||v||.

    Eager mode runs torch's fused kernel, exactly like `nn.utils.parametrizations.weight_norm`.
    Under torch.compile it is written out in plain ops: the fused kernel's backward insists on a
    contiguous saved `v`, which inductor does not promise, and inductor fuses the plain ops anyway.
    """

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            dims = tuple(range(1, weight_v.dim()))
            return weight_v * (weight_g / torch.linalg.vector_norm(weight_v, dim=dims, keepdim=True))
        return torch._weight_norm(weight_v, weight_g, 0)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return torch.norm_except_dim(weight, 2, 0), weight


def weight_normed(module: ModuleT) -> ModuleT:
    """Weight norm over the output dim (dim 0), with the parametrization API.

    Parameter names become `<module>.parametrizations.weight.original0/1` (g, v), as with
    `nn.utils.parametrizations.weight_norm`; `state_dict.py` maps them to the legacy `weight_g` /
    `weight_v` names that RVC's files use.
    """
    nn.utils.parametrize.register_parametrization(module, "weight", WeightNorm(), unsafe=True)
    return module


def dilated_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 convolution with an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: Tensor, max_length: int) -> Tensor:
    """[B] lengths -> [B, max_length] bool, True on valid steps. `max_length` comes from a shape,
    never from `lengths.max()`, so no host sync is needed."""
    steps = torch.arange(max_length, device=lengths.device, dtype=lengths.dtype)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: Tensor, ids_slice: Tensor, segment_size: int) -> Tensor:
    """Cut `segment_size` steps of the last axis of each item, starting at `ids_slice[b]`.

    Works for [B, T] and [B, C, T]. `ids_slice` is in the units of x's last axis: the trainer cuts the
    matching real audio with `slice_segments(wave, ids_slice * hop, segment_frames * hop)`.
    An input shorter than the window is zero-padded at the end, and starts are clamped so the window
    stays inside x; both are shape-only decisions (no host sync).
    """
    length = x.size(-1)
    if length < segment_size:
        x = F.pad(x, (0, segment_size - length))
        length = segment_size
    starts = ids_slice.to(device=x.device, dtype=torch.long).clamp(0, length - segment_size)
    offsets = torch.arange(segment_size, device=x.device)
    index = starts.view(-1, *([1] * (x.dim() - 1))) + offsets
    return torch.gather(x, -1, index.expand(*x.shape[:-1], segment_size))


def rand_slice_segments(x: Tensor, lengths: Tensor, segment_size: int) -> tuple[Tensor, Tensor]:
    """A random window of `segment_size` steps inside each item's valid length.

    Returns (window, ids_slice) with ids_slice [B] long, uniform in [0, length - segment_size]
    (0 when the item is shorter than the window).
    """
    choices = (lengths - segment_size + 1).clamp(min=1)
    ids_slice = (torch.rand(lengths.shape, device=lengths.device) * choices).long()
    return slice_segments(x, ids_slice, segment_size), ids_slice
