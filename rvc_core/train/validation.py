"""The held-out validation loss: mel L1 of whole segments synthesised by `Generator.infer`.

fp32, no gradients, and deterministic: the prior's noise comes from a forked random stream seeded
with the training seed, so the score moves only when the weights do, and the training random
stream is left exactly where it was (a resumed run stays identical to an uninterrupted one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rvc_core.spec import SpectrogramSpec

if TYPE_CHECKING:
    import torch

    from rvc_core.models import Generator
    from rvc_core.train.data import ResidentDataset


def validation_mel_loss(
    generator: Generator, dataset: ResidentDataset, *, spec: SpectrogramSpec, seed: int, batch_size: int
) -> torch.Tensor:
    """Mean |log-mel(generated) - log-mel(real)| over every valid frame and mel bin: a device scalar."""
    import torch

    from rvc_core.models.audio import mel_spectrogram

    device = torch.device(dataset.device)
    order = sorted(range(len(dataset)), key=lambda i: dataset.frames[i])  # similar lengths batch together
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    was_training = generator.training
    generator.eval()
    cuda_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():
            torch.manual_seed(seed)
            with torch.autocast(device.type, enabled=False):
                for start in range(0, len(order), batch_size):
                    batch = dataset.collate(order[start : start + batch_size])
                    audio = generator.infer(batch.phone, batch.lengths, batch.pitch, batch.pitchf, batch.sid)
                    generated = mel_spectrogram(audio, spec)
                    frames = min(generated.shape[-1], batch.mel.shape[-1])
                    steps = torch.arange(frames, device=device)
                    mask = (steps.unsqueeze(0) < batch.lengths.unsqueeze(1)).unsqueeze(1)  # [B, 1, T]
                    error = (generated[..., :frames] - batch.mel[..., :frames]).abs() * mask
                    total += error.sum()
                    count += mask.sum() * generated.shape[1]
    finally:
        generator.train(was_training)
    return total / count.clamp(min=1)
