"""Building blocks: the gated WaveNet stack, residual-coupling flows, and HiFi-GAN's ResBlock1.

Attribute names (`in_layers`, `res_skip_layers`, `cond_layer`, `flows`, `convs1`, ...) follow RVC's files.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_core.models.commons import LRELU_SLOPE, dilated_padding, weight_normed


class WaveNet(nn.Module):
    """Non-causal gated WaveNet with global conditioning; returns the masked sum of skip outputs."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        gin_channels: int,
        dilation_rate: int = 1,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.cond_layer = weight_normed(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(
                weight_normed(
                    nn.Conv1d(
                        hidden_channels,
                        2 * hidden_channels,
                        kernel_size,
                        dilation=dilation,
                        padding=dilated_padding(kernel_size, dilation),
                    )
                )
            )
            # The last layer only feeds the skip path, so it needs no residual half.
            out_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_normed(nn.Conv1d(hidden_channels, out_channels, 1)))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor) -> Tensor:
        """x [B, hidden, T], x_mask [B, 1, T], g [B, gin, 1] -> [B, hidden, T]."""
        h = self.hidden_channels
        cond = self.cond_layer(g)
        skip = torch.zeros_like(x)
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            gate_in = in_layer(x) + cond[:, 2 * h * i : 2 * h * (i + 1)]
            acts = self.drop(torch.tanh(gate_in[:, :h]) * torch.sigmoid(gate_in[:, h:]))
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                skip = skip + res_skip[:, h:]
            else:
                skip = skip + res_skip
        return skip * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by a WaveNet of the first.

    `post` starts at zero, so a fresh flow is the identity.
    """

    def __init__(
        self, channels: int, hidden_channels: int, kernel_size: int, n_layers: int, gin_channels: int
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling needs an even channel count, got {channels}")
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, n_layers, gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor, *, reverse: bool = False) -> Tensor:
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], dim=1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g)
        shift = self.post(h) * x_mask
        x1 = (x1 - shift) * x_mask if reverse else shift + x1 * x_mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverses the channel order so the next coupling transforms the other half."""

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor, *, reverse: bool = False) -> Tensor:
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """`n_flows` couplings, each followed by a Flip (so the couplings sit at `flows.0, 2, 4, ...`)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        n_flows: int,
        gin_channels: int,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(channels, hidden_channels, kernel_size, n_layers, gin_channels)
            )
            self.flows.append(Flip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor, *, reverse: bool = False) -> Tensor:
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g, reverse=reverse)
        return x


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type "1": pairs of (dilated conv, plain conv) with leaky ReLUs."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_normed(
                nn.Conv1d(
                    channels, channels, kernel_size, dilation=d, padding=dilated_padding(kernel_size, d)
                )
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=dilated_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = conv1(F.leaky_relu(x, LRELU_SLOPE))
            xt = conv2(F.leaky_relu(xt, LRELU_SLOPE))
            x = x + xt
        return x
