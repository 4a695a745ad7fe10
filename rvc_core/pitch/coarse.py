"""Fine pitch (Hz) to the coarse ids of RVC's `emb_pitch` table (RVC.md §3)."""

from __future__ import annotations

import numpy as np

from rvc_core.spec import F0_MAX, F0_MIN, PITCH_BINS


def _mel(f0_hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f0_hz, dtype=np.float64) / 700.0)


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """int64 ids in 1..255 (same shape as `f0_hz`): the mel-scaled pitch mapped linearly from
    50..1100 Hz onto 1..255 and rounded; unvoiced (0), below-range and non-finite values are 1,
    values above 1100 Hz are 255."""
    f0 = np.asarray(f0_hz, dtype=np.float64)
    f0 = np.where(np.isfinite(f0), f0, 0.0)
    mel = _mel(f0)
    mel_min, mel_max = _mel(F0_MIN), _mel(F0_MAX)
    top = PITCH_BINS - 1  # 255: id 0 is never produced
    scaled = np.where(mel > 0, (mel - mel_min) * (top - 1) / (mel_max - mel_min) + 1, mel)
    return np.rint(np.clip(scaled, 1, top)).astype(np.int64)
