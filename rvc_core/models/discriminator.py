"""RVC's multi-period discriminator: one scale discriminator on raw audio plus one period
discriminator per period, each returning logits and its feature maps (for feature matching)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_core.models.commons import LRELU_SLOPE, weight_normed
from rvc_core.models.presets import DiscriminatorArch, discriminator_arch

# (kernel, stride, padding) of the scale discriminator's 6 convolutions.
_SCALE_LAYOUT: tuple[tuple[int, int, int], ...] = (
    (15, 1, 7),
    (41, 4, 20),
    (41, 4, 20),
    (41, 4, 20),
    (41, 4, 20),
    (5, 1, 2),
)
_PERIOD_KERNEL = 5
_PERIOD_STRIDE = 3


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU convolutions then the output conv: (flattened logits [B, N], every layer's output)."""
    fmap: list[Tensor] = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class ScaleDiscriminator(nn.Module):
    """1-D strided grouped convolutions over the waveform (RVC's `DiscriminatorS`)."""

    def __init__(self, channels: tuple[int, ...], groups: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        in_channels = 1
        for out_channels, group, (kernel, stride, padding) in zip(
            channels, groups, _SCALE_LAYOUT, strict=True
        ):
            self.convs.append(
                weight_normed(
                    nn.Conv1d(in_channels, out_channels, kernel, stride, padding=padding, groups=group)
                )
            )
            in_channels = out_channels
        self.conv_post = weight_normed(nn.Conv1d(in_channels, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x [B, 1, T] -> (logits [B, N], feature maps)."""
        return _conv_stack(self.convs, self.conv_post, x)


class PeriodDiscriminator(nn.Module):
    """2-D convolutions over the waveform folded into rows of `period` samples (`DiscriminatorP`)."""

    def __init__(self, period: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.period = period
        self.convs = nn.ModuleList()
        in_channels = 1
        padding = ((_PERIOD_KERNEL - 1) // 2, 0)
        for i, out_channels in enumerate(channels):
            stride = _PERIOD_STRIDE if i < len(channels) - 1 else 1
            self.convs.append(
                weight_normed(
                    nn.Conv2d(in_channels, out_channels, (_PERIOD_KERNEL, 1), (stride, 1), padding=padding)
                )
            )
            in_channels = out_channels
        self.conv_post = weight_normed(nn.Conv2d(in_channels, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x [B, 1, T] -> (logits [B, N], feature maps)."""
        b, c, t = x.shape
        remainder = t % self.period
        if remainder:
            x = F.pad(x, (0, self.period - remainder), mode="reflect")
            t = t + self.period - remainder
        return _conv_stack(self.convs, self.conv_post, x.view(b, c, t // self.period, self.period))


class MultiPeriodDiscriminator(nn.Module):
    """`discriminators.0` is the scale discriminator, `discriminators.1..` one per period."""

    def __init__(self, arch: DiscriminatorArch) -> None:
        super().__init__()
        self.arch = arch
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(arch.scale_channels, arch.scale_groups)]
            + [PeriodDiscriminator(p, arch.period_channels) for p in arch.periods]
        )

    def forward(
        self, y: Tensor, y_hat: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[list[Tensor]]]:
        """y, y_hat [B, 1, T] -> (real logits, fake logits, real feature maps, fake feature maps).

        Real and generated audio go through each discriminator as one batch (half the kernel launches);
        nothing mixes across the batch, so this equals two separate passes.
        """
        batch = y.size(0)
        both = torch.cat([y, y_hat.to(y.dtype)], dim=0)
        real_logits: list[Tensor] = []
        fake_logits: list[Tensor] = []
        real_fmaps: list[list[Tensor]] = []
        fake_fmaps: list[list[Tensor]] = []
        for discriminator in self.discriminators:
            logits, fmap = discriminator(both)
            real_logits.append(logits[:batch])
            fake_logits.append(logits[batch:])
            real_fmaps.append([f[:batch] for f in fmap])
            fake_fmaps.append([f[batch:] for f in fmap])
        return real_logits, fake_logits, real_fmaps, fake_fmaps

    def features(self, y: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        """y [B, 1, T] -> (logits, feature maps) of every discriminator, for one kind of input.

        The generator step uses this to run the real audio under `no_grad` (its feature maps are
        targets) apart from the generated audio, which halves the discriminator's backward pass there.
        """
        logits: list[Tensor] = []
        fmaps: list[list[Tensor]] = []
        for discriminator in self.discriminators:
            one_logits, one_fmap = discriminator(y)
            logits.append(one_logits)
            fmaps.append(one_fmap)
        return logits, fmaps


def build_discriminator(version: str, *, preset: str = "full") -> MultiPeriodDiscriminator:
    """RVC's discriminator for `version`: 1 scale + 6 periods (v1) or 8 periods (v2)."""
    return MultiPeriodDiscriminator(discriminator_arch(version, preset))
