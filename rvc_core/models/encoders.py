"""The prior ("text") encoder over content features and pitch, and the posterior encoder over the
linear spectrogram. Attribute names follow RVC's `enc_p` / `enc_q`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_core.models.attentions import AttentionEncoder
from rvc_core.models.commons import sequence_mask
from rvc_core.models.modules import WaveNet
from rvc_core.spec import PITCH_BINS


class TextEncoder(nn.Module):
    """Content features (+ coarse pitch) -> prior mean and log-std per frame."""

    def __init__(
        self,
        feature_dim: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        window: int,
        *,
        f0: bool,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.input_scale = math.sqrt(hidden_channels)
        self.emb_phone = nn.Linear(feature_dim, hidden_channels)
        self.emb_pitch = nn.Embedding(PITCH_BINS, hidden_channels) if f0 else None
        self.encoder = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, window
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, phone: Tensor, pitch: Tensor | None, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """phone [B, T, D], pitch [B, T] ids or None, lengths [B] -> (m, logs [B, out, T], mask [B, 1, T])."""
        x = self.emb_phone(phone)
        if self.emb_pitch is not None:
            if pitch is None:
                raise ValueError("a pitch-guided model needs coarse pitch ids")
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * self.input_scale, 0.1).transpose(1, -1)  # [B, hidden, T]
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> a sample z of the posterior, with its mean and log-std."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        gin_channels: int,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, n_layers, gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, spec: Tensor, lengths: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """spec [B, F, T], lengths [B], g [B, gin, 1] -> (z, m, logs [B, out, T], mask [B, 1, T])."""
        x_mask = sequence_mask(lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)
        x = self.pre(spec) * x_mask
        x = self.enc(x, x_mask, g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask
