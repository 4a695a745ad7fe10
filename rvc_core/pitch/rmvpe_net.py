"""The RMVPE network (a deep residual U-Net over the log-mel, then a BiGRU and a 360-bin sigmoid).

Our own implementation. Attribute names and nesting are chosen so that `state_dict()` of the
full-size model has exactly the keys and shapes of the official `rmvpe.pt` (listed in
`rmvpe_state_dict.tsv`), so that file loads with `strict=True`. Module layout, by key prefix:

    unet.encoder.bn                              BatchNorm over the 1 input channel
    unet.encoder.layers.{0..4}.conv.{0..3}       residual blocks, 1->16->32->64->128->256 channels
    unet.intermediate.layers.{0..3}.conv.{0..3}  256->512, then 512->512, at 1/32 of the mel bins
    unet.decoder.layers.{0..4}.conv1             transposed conv x2 up, 512->256->...->16
    unet.decoder.layers.{0..4}.conv2.{0..3}      residual blocks over [upsampled, skip]
    cnn                                          16 -> 3 channels
    fc.0.gru                                     BiGRU(3 * 128 -> 256 per direction)
    fc.1                                         Linear(512 -> 360)

A residual block's `conv` is (conv3x3, BN, ReLU, conv3x3, BN, ReLU); it has a 1x1 `shortcut`
(with bias) only where the channel count changes. The full-size model has 90.5 M values: 181 MB
in fp16, the size of the published file. This module imports torch at import time; the rest of
`rvc_core.pitch` imports it only when an RMVPE extractor is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

BN_MOMENTUM = 0.01  # the original training's BatchNorm momentum (irrelevant at inference)


@dataclass(frozen=True)
class RmvpeArchitecture:
    n_blocks: int = 4  # residual blocks per U-Net stage
    en_de_layers: int = 5  # encoder (and decoder) stages; each halves time and mel bins
    inter_layers: int = 4  # stages at the bottom of the U
    en_out_channels: int = 16  # channels of the first encoder stage; doubled per stage
    gru_hidden: int = 256  # per direction
    n_mels: int = 128
    n_bins: int = 360  # 20-cent pitch classes

    @property
    def time_multiple(self) -> int:
        """Frames must be a multiple of this for the U-Net's poolings and upsamplings to line up."""
        return 2**self.en_de_layers


OFFICIAL = RmvpeArchitecture()
# `--assets none`: same module structure, narrow, so tests and dry runs stay fast.
TINY = RmvpeArchitecture(n_blocks=1, inter_layers=1, en_out_channels=2, gru_hidden=8)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.conv(x) + skip


class ResidualStage(nn.Module):
    """`n_blocks` residual blocks, the first changing the channel count."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int) -> None:
        super().__init__()
        channels = [in_channels] + [out_channels] * n_blocks
        self.conv = nn.ModuleList(ResidualBlock(a, b) for a, b in pairwise(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class Encoder(nn.Module):
    def __init__(self, arch: RmvpeArchitecture) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=BN_MOMENTUM)
        widths = [1] + [arch.en_out_channels * 2**i for i in range(arch.en_de_layers)]
        self.layers = nn.ModuleList(ResidualStage(a, b, arch.n_blocks) for a, b in pairwise(widths))
        self.pool = nn.AvgPool2d(2)  # halves time and mel bins after every stage
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        x = self.bn(x)
        for stage in self.layers:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        return x, skips


class Intermediate(nn.Module):
    def __init__(self, arch: RmvpeArchitecture, in_channels: int) -> None:
        super().__init__()
        widths = [in_channels] + [in_channels * 2] * arch.inter_layers
        self.layers = nn.ModuleList(ResidualStage(a, b, arch.n_blocks) for a, b in pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage(x)
        return x


class DecoderStage(nn.Module):
    def __init__(self, in_channels: int, n_blocks: int) -> None:
        super().__init__()
        out_channels = in_channels // 2
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        channels = [out_channels * 2] + [out_channels] * n_blocks  # input: [upsampled, skip]
        self.conv2 = nn.ModuleList(ResidualBlock(a, b) for a, b in pairwise(channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class Decoder(nn.Module):
    def __init__(self, arch: RmvpeArchitecture, in_channels: int) -> None:
        super().__init__()
        widths = [in_channels // 2**i for i in range(arch.en_de_layers)]
        self.layers = nn.ModuleList(DecoderStage(w, arch.n_blocks) for w in widths)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips), strict=True):
            x = stage(x, skip)
        return x


class DeepUnet(nn.Module):
    def __init__(self, arch: RmvpeArchitecture) -> None:
        super().__init__()
        self.encoder = Encoder(arch)
        self.intermediate = Intermediate(arch, self.encoder.out_channels)
        self.decoder = Decoder(arch, self.encoder.out_channels * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGru(nn.Module):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        if lengths is None or all(n == x.shape[1] for n in lengths):
            return self.gru(x)[0]
        # Packed, so each clip's backward pass starts at its own end, not in the batch's padding.
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]


class RmvpeNet(nn.Module):
    """log-mel (batch, n_mels, frames) -> pitch-class salience (batch, frames, 360) in [0, 1].

    `frames` must be a multiple of `arch.time_multiple`; `lengths` (frames per clip, default all)
    limits the BiGRU to each clip's own frames."""

    def __init__(self, arch: RmvpeArchitecture = OFFICIAL) -> None:
        super().__init__()
        self.arch = arch
        self.unet = DeepUnet(arch)
        self.cnn = nn.Conv2d(arch.en_out_channels, 3, 3, padding=1)
        self.fc = nn.ModuleList(
            [BiGru(3 * arch.n_mels, arch.gru_hidden), nn.Linear(2 * arch.gru_hidden, arch.n_bins)]
        )

    def forward(self, mel: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        x = mel.transpose(1, 2).unsqueeze(1)  # (batch, 1, frames, mel bins): time is the image height
        x = self.cnn(self.unet(x))  # (batch, 3, frames, mel bins)
        x = x.transpose(1, 2).flatten(2)  # (batch, frames, 3 * mel bins)
        gru, linear = self.fc
        return torch.sigmoid(linear(gru(x, lengths)))
