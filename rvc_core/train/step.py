"""One GAN training step (RVC.md §5): a discriminator update, then a generator update.

No value is read back to the host here: losses come back as one device tensor, a non-finite loss
or non-finite gradients skip that network's optimiser step on the device (see `precision.py`), and
the gradient norms are computed only when the caller asks (once per logging interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rvc_core.spec import SpectrogramSpec
from rvc_core.train.config import KL_LOSS_WEIGHT, MEL_LOSS_WEIGHT

if TYPE_CHECKING:
    import torch

    from rvc_core.models import Generator, MultiPeriodDiscriminator
    from rvc_core.train.data import Batch
    from rvc_core.train.precision import GuardedStepper, Precision

# Order of the values in `StepResult.losses` (and of the loop's accumulators).
LOSS_NAMES: tuple[str, ...] = ("d_total", "g_total", "g_mel", "g_kl", "g_fm", "g_adv")


@dataclass
class Trainee:
    """The two networks and their optimisers, with parameter lists built once (not per step)."""

    generator: Generator
    discriminator: MultiPeriodDiscriminator
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    g_params: list[torch.Tensor]
    d_params: list[torch.Tensor]


@dataclass
class StepResult:
    losses: torch.Tensor  # [len(LOSS_NAMES)] float32 on the device
    finite: torch.Tensor  # [] bool: every loss finite (the losses count in the means)
    grad_norms: torch.Tensor | None  # [2] (G, D) when asked for


def mel_reconstruction_loss(
    generated: torch.Tensor, target_mel: torch.Tensor, spec: SpectrogramSpec
) -> torch.Tensor:
    """L1 between the log-mel of the generated window [B, 1, N] and the real one [B, n_mels, T], fp32."""
    from torch.nn import functional as F

    from rvc_core.models.audio import mel_spectrogram

    generated_mel = mel_spectrogram(generated.float().squeeze(1), spec)
    frames = min(generated_mel.shape[-1], target_mel.shape[-1])
    return F.l1_loss(generated_mel[..., :frames], target_mel[..., :frames].float())


def _gradient_norm(params: list[torch.Tensor]) -> torch.Tensor:
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train_step(
    trainee: Trainee,
    batch: Batch,
    *,
    precision: Precision,
    stepper: GuardedStepper,
    spec: SpectrogramSpec,
    want_grad_norms: bool = False,
) -> StepResult:
    import torch

    from rvc_core.models import losses, slice_segments

    g, d = trainee.generator, trainee.discriminator
    frames = g.segment_frames
    hop = spec.hop_length
    with precision.autocast():
        out = g(batch.phone, batch.lengths, batch.pitch, batch.pitchf, batch.spec, batch.lengths, batch.sid)
        real = slice_segments(batch.wave, out.ids_slice * hop, frames * hop)
        real_logits, fake_logits, _, _ = d(real, out.audio.detach())
    loss_d = losses.discriminator_loss(real_logits, fake_logits)
    d_ok = torch.isfinite(loss_d)
    trainee.optim_d.zero_grad(set_to_none=True)
    stepper.scale_loss(loss_d).backward()
    stepper.step(trainee.optim_d, trainee.d_params, d_ok, network="d")

    with precision.autocast():
        # Real feature maps are only targets: no graph for them, and no backward through D for them.
        with torch.no_grad():
            _, real_fmaps = d.features(real)
        fake_logits, fake_fmaps = d.features(out.audio.to(real.dtype))
    with torch.autocast(precision.device_type, enabled=False):  # losses in fp32
        target_mel = slice_segments(batch.mel, out.ids_slice, frames)
        loss_mel = mel_reconstruction_loss(out.audio, target_mel, spec) * MEL_LOSS_WEIGHT
        loss_kl = losses.kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.z_mask) * KL_LOSS_WEIGHT
        # The x2 of feature matching is applied inside `feature_matching_loss` (RVC's `feature_loss`).
        loss_fm = losses.feature_matching_loss(real_fmaps, fake_fmaps)
        loss_adv = losses.generator_adversarial_loss(fake_logits)
        loss_g = loss_adv + loss_fm + loss_mel + loss_kl
    all_ok = torch.isfinite(loss_g) & d_ok
    trainee.optim_g.zero_grad(set_to_none=True)
    # Only G's gradients: D's would be computed and thrown away.
    stepper.scale_loss(loss_g).backward(inputs=trainee.g_params)
    stepper.step(trainee.optim_g, trainee.g_params, all_ok, network="g")
    stepper.end_step()

    grad_norms = None
    if want_grad_norms:
        grad_norms = torch.stack([_gradient_norm(trainee.g_params), _gradient_norm(trainee.d_params)])
    values = torch.stack([loss_d, loss_g, loss_mel, loss_kl, loss_fm, loss_adv]).detach().float()
    return StepResult(losses=values, finite=all_ok, grad_norms=grad_norms)
