"""Spectrograms exactly as RVC computes them for training (RVC.md §1.1), in fp32.

Linear magnitude feeds the posterior encoder; the log-mel of real and generated audio feeds the mel L1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from rvc_core.spec import SpectrogramSpec

MAGNITUDE_EPS = 1e-6  # added under the square root, as RVC does
LOG_CLAMP = 1e-5  # floor before the log of the mel energies

# Built on first use (never at import), one per (size, device, dtype).
_windows: dict[tuple[int, str, torch.dtype], Tensor] = {}
_mel_bases: dict[tuple[int, int, int, str, torch.dtype], Tensor] = {}


def _hann_window(win_length: int, device: torch.device) -> Tensor:
    key = (win_length, str(device), torch.float32)
    window = _windows.get(key)
    if window is None:
        window = torch.hann_window(win_length, device=device, dtype=torch.float32)
        _windows[key] = window
    return window


def linear_spectrogram(audio: Tensor, spec: SpectrogramSpec) -> Tensor:
    """audio [B, T] (or [B, 1, T]) -> magnitude [B, n_fft//2 + 1, frames], fp32.

    Hann window, reflect padding of (n_fft - hop)/2 on both sides and `center=False`, so a clip of
    `n * hop` samples gives exactly `n` frames. Magnitude = sqrt(re^2 + im^2 + 1e-6).
    """
    if audio.dim() == 3:
        audio = audio.squeeze(1)
    pad = (spec.n_fft - spec.hop_length) // 2
    with torch.autocast(device_type=audio.device.type, enabled=False):
        audio = F.pad(audio.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        stft = torch.stft(
            audio,
            spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window=_hann_window(spec.win_length, audio.device),
            center=False,
            return_complex=True,
        )
        return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + MAGNITUDE_EPS)


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3  # slope of the linear part
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: Tensor) -> Tensor:
    linear = hz / _SLANEY_HZ_PER_MEL
    log = (
        _SLANEY_MIN_LOG_MEL
        + torch.log(torch.clamp(hz, min=_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOG_STEP
    )
    return torch.where(hz >= _SLANEY_MIN_LOG_HZ, log, linear)


def _slaney_mel_to_hz(mel: Tensor) -> Tensor:
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_MIN_LOG_MEL))
    return torch.where(mel >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_filterbank(spec: SpectrogramSpec) -> Tensor:
    """[n_mels, n_fft//2 + 1] triangular filters on the Slaney mel scale with Slaney (area) norm,
    fmin 0 and fmax = Nyquist: the values of `librosa.filters.mel(sr, n_fft, n_mels)`."""
    dtype = torch.float64  # computed in double like librosa, returned as fp32
    fft_freqs = torch.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1, dtype=dtype)
    mel_max = _hz_to_slaney_mel(torch.tensor(spec.sample_rate / 2, dtype=dtype))
    mel_points = torch.linspace(0.0, float(mel_max), spec.n_mels + 2, dtype=dtype)
    edges = _slaney_mel_to_hz(mel_points)  # [n_mels + 2] Hz
    widths = torch.diff(edges)
    ramps = edges.unsqueeze(1) - fft_freqs.unsqueeze(0)  # [n_mels + 2, n_freqs]
    rising = -ramps[:-2] / widths[:-1].unsqueeze(1)
    falling = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    return (weights * area_norm.unsqueeze(1)).float()


def _cached_mel_basis(spec: SpectrogramSpec, device: torch.device) -> Tensor:
    key = (spec.sample_rate, spec.n_fft, spec.n_mels, str(device), torch.float32)
    basis = _mel_bases.get(key)
    if basis is None:
        basis = mel_filterbank(spec).to(device)
        _mel_bases[key] = basis
    return basis


def mel_from_linear(magnitude: Tensor, spec: SpectrogramSpec) -> Tensor:
    """magnitude [B, n_fft//2 + 1, frames] -> log mel [B, n_mels, frames], fp32: log(clamp(M @ S, 1e-5))."""
    with torch.autocast(device_type=magnitude.device.type, enabled=False):
        mel = torch.matmul(_cached_mel_basis(spec, magnitude.device), magnitude.float())
        return torch.log(torch.clamp(mel, min=LOG_CLAMP))


def mel_spectrogram(audio: Tensor, spec: SpectrogramSpec) -> Tensor:
    """audio [B, T] (or [B, 1, T]) -> log mel [B, n_mels, frames], fp32."""
    return mel_from_linear(linear_spectrogram(audio, spec), spec)
