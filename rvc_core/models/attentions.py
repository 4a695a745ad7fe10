"""The text encoder's transformer: relative-position self-attention (VITS style), FFN, layer norm.

Parameter names (`attn_layers.N.conv_q`, `emb_rel_k`, `norm_layers_1.N.gamma`, ...) follow RVC's files.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of a [B, C, T] tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def _relative_positions(length: int, window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For every (query i, key j): the row of the relative-embedding table for offset j-i, and whether
    |j-i| is inside the window (outside it the embedding is zero)."""
    steps = torch.arange(length, device=device)
    offset = steps.unsqueeze(0) - steps.unsqueeze(1)  # [i, j] = j - i
    return offset.clamp(-window, window) + window, offset.abs() <= window


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative-position embeddings for keys and values,
    shared across heads, over offsets -window..window."""

    def __init__(self, channels: int, n_heads: int, window: int, p_dropout: float) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_channels = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(p_dropout)
        rel_std = self.head_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window + 1, self.head_channels) * rel_std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window + 1, self.head_channels) * rel_std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, C, T] -> [B, heads, T, head_channels]."""
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.head_channels, t).transpose(2, 3)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x [B, C, T], attn_mask [B, 1, T, T] (1 where both query and key are valid) -> [B, C, T]."""
        b, c, t = x.shape
        query = self._heads(self.conv_q(x)) / math.sqrt(self.head_channels)
        key = self._heads(self.conv_k(x))
        value = self._heads(self.conv_v(x))
        rel_index, in_window = _relative_positions(t, self.window, x.device)
        rel_index = rel_index.expand(b, self.n_heads, t, t)
        outside = ~in_window

        # In-place edits of fresh [B, h, T, T] buffers: none of them is saved for backward, so autograd
        # allows it, and the step makes no full copies of the score matrix beyond the ones it needs.
        scores = torch.matmul(query, key.transpose(-2, -1))
        rel_logits = torch.matmul(query, self.emb_rel_k[0].transpose(0, 1))  # [B, h, T, 2w+1]
        scores += torch.gather(rel_logits, -1, rel_index).masked_fill_(outside, 0.0)
        scores.masked_fill_(attn_mask == 0, -1e4)
        weights = self.drop(F.softmax(scores, dim=-1))

        out = torch.matmul(weights, value)
        # Sum the attention weights per relative offset, then mix the value embeddings with them.
        per_offset = torch.zeros(
            b, self.n_heads, t, 2 * self.window + 1, device=x.device, dtype=weights.dtype
        ).scatter_add_(-1, rel_index, weights.masked_fill(outside, 0.0))
        out = out + torch.matmul(per_offset, self.emb_rel_v[0].to(per_offset.dtype))
        out = out.transpose(2, 3).reshape(b, c, t)
        return self.conv_o(out)


class FeedForward(nn.Module):
    """Two 'same'-padded convolutions with a ReLU between them, masked at every step."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float) -> None:
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x = self.conv_1(F.pad(x * x_mask, self.pad))
        x = self.drop(torch.relu(x))
        x = self.conv_2(F.pad(x * x_mask, self.pad))
        return x * x_mask


class AttentionEncoder(nn.Module):
    """`n_layers` post-norm transformer blocks (attention, FFN) over a [B, C, T] sequence."""

    def __init__(
        self,
        channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        window: int,
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            RelativeSelfAttention(channels, n_heads, window, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x [B, C, T], x_mask [B, 1, T] -> [B, C, T]."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm_1(x + self.drop(attn(x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
