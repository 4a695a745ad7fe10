"""GAN and VAE losses of RVC's recipe, always computed in fp32 (inputs are upcast).

The trainer weights them as RVC does: generator total = adversarial + feature matching (already x2,
see below) + 45 x mel L1 + 1 x KL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FEATURE_MATCHING_SCALE = 2.0  # applied inside feature_matching_loss, as RVC's `feature_loss` does


def discriminator_loss(real: Sequence[Tensor], fake: Sequence[Tensor]) -> Tensor:
    """Least squares: sum over discriminators of mean((1 - D(y))^2) + mean(D(G(z))^2).

    0 when every real logit is 1 and every fake logit is 0.
    """
    total = torch.zeros((), device=real[0].device)
    for real_logits, fake_logits in zip(real, fake, strict=True):
        total = total + torch.mean((1.0 - real_logits.float()) ** 2) + torch.mean(fake_logits.float() ** 2)
    return total


def generator_adversarial_loss(fake: Sequence[Tensor]) -> Tensor:
    """Least squares: sum over discriminators of mean((1 - D(G(z)))^2)."""
    total = torch.zeros((), device=fake[0].device)
    for fake_logits in fake:
        total = total + torch.mean((1.0 - fake_logits.float()) ** 2)
    return total


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[Tensor]], fake_fmaps: Sequence[Sequence[Tensor]]
) -> Tensor:
    """Sum over every discriminator layer of mean |real - fake|, times 2.

    The x2 mirrors RVC's `feature_loss`, which applies it internally: the caller must not scale it
    again. Real feature maps are detached, so this loss only trains the generator.
    """
    total = torch.zeros((), device=real_fmaps[0][0].device)
    for real_layers, fake_layers in zip(real_fmaps, fake_fmaps, strict=True):
        for real, fake in zip(real_layers, fake_layers, strict=True):
            total = total + torch.mean(torch.abs(real.detach().float() - fake.float()))
    return total * FEATURE_MATCHING_SCALE


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, z_mask: Tensor) -> Tensor:
    """KL(posterior || prior), estimated at the flowed posterior sample z_p, averaged over valid frames.

    All tensors [B, C, T] except z_mask [B, 1, T]; padded frames are ignored.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)
