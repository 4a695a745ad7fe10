"""What every pitch method shares: the frame grid, the output contract and the asset interface.

Frame convention (the whole project): pitch runs on 16 kHz mono float32 audio with a hop of 160
samples, so for `n` input samples there are exactly `n // 160 + 1` frames and frame `i` is centred
at `i * 10 ms`. Every method returns exactly that many values, float32 Hz, 0 = unvoiced.
Unvoiced frames stay 0 (RVC 0604 and Applio); we deliberately do not interpolate across them
(RVC 2026 does), so the NSF source is silent where the voice is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from rvc_core.spec import FEATURE_SAMPLE_RATE, PITCH_HOP

SAMPLE_RATE = FEATURE_SAMPLE_RATE  # Hz: every method works on the 16 kHz copy
HOP = PITCH_HOP  # samples: 10 ms at 16 kHz
FRAME_SECONDS = HOP / SAMPLE_RATE  # 0.01 s between frame centres


class PitchAssets(Protocol):
    """The part of `rvc_core.assets.AssetStore` that pitch extraction uses."""

    @property
    def random_init(self) -> bool:
        """True for `--assets none`: random-initialised networks, meaningless output."""
        ...

    @property
    def full_size_random(self) -> bool:
        """With `random_init`: build the networks at full size (benchmarks) instead of tiny."""
        ...

    def path(self, name: str) -> Path:
        """The local file of asset `name`; raises `AssetMissing` with a how-to when absent."""
        ...


class PitchExtractor(Protocol):
    method: str

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 f0 array (Hz, 0 = unvoiced, `frame_count(len(x))` long) per input clip."""
        ...


def frame_count(n_samples: int) -> int:
    """Frames the project's pitch grid has for `n_samples` of 16 kHz audio."""
    return n_samples // HOP + 1


def as_mono_clip(audio: np.ndarray) -> np.ndarray:
    """The clip as contiguous 1-D float32; anything but mono is a caller bug, not data to guess at."""
    clip = np.asarray(audio)
    if clip.ndim != 1:
        raise ValueError(f"pitch extraction takes mono 16 kHz clips (1-D arrays), got shape {clip.shape}")
    return np.ascontiguousarray(clip, dtype=np.float32)


def fit_to_grid(f0_hz: np.ndarray, n_samples: int) -> np.ndarray:
    """`f0_hz` on the project grid: trimmed or zero-padded (unvoiced) at the end to
    `frame_count(n_samples)` frames, non-finite values set to 0, float32."""
    f0 = np.asarray(f0_hz, dtype=np.float64).reshape(-1)
    wanted = frame_count(n_samples)
    f0 = f0[:wanted] if f0.size >= wanted else np.pad(f0, (0, wanted - f0.size))
    f0 = np.where(np.isfinite(f0), f0, 0.0)
    return f0.astype(np.float32)
