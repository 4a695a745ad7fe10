"""Statistics of the decoded audio before any filtering, gathered block by block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rvc_core.preprocess.filters import downmix
from rvc_core.preprocess.framing import BlockEnergy
from rvc_core.spec import SLICER_HOP_MS, SLICER_THRESHOLD_DB

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
SILENCE_FRAME_MS = SLICER_HOP_MS  # frames for the silent fraction
SILENCE_THRESHOLD_DB = SLICER_THRESHOLD_DB  # dBFS RMS


@dataclass(frozen=True)
class AudioStats:
    frames: int  # per channel
    sample_rate: int  # Hz
    channels: int
    peak: float  # largest finite |sample|, all channels
    clipped_fraction: float
    silent_fraction: float
    finite: bool  # False when any sample is NaN or infinite

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


class StatsAccumulator:
    """Feed `(frames, channels)` float blocks with `push`, then read `finish()`."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        self._sample_rate = sample_rate
        self._channels = channels
        self._frame = max(1, round(sample_rate * SILENCE_FRAME_MS / 1000))
        self._energy = BlockEnergy(self._frame)
        self._peak = 0.0
        self._clipped = 0
        self._finite = True

    def push(self, block: np.ndarray) -> None:
        if block.size:
            # max and min need no |x| copy, and propagate NaN and inf: only then look closer.
            high, low = float(block.max()), float(block.min())
            if math.isfinite(high) and math.isfinite(low):
                peak = max(high, -low)
                if peak >= CLIP_LEVEL:  # most blocks have no sample that loud: skip the count
                    self._clipped += int(np.count_nonzero(np.abs(block) >= CLIP_LEVEL))
            else:
                self._finite = False
                magnitude = np.abs(block)
                finite = magnitude[np.isfinite(magnitude)]
                peak = float(finite.max()) if finite.size else 0.0
                self._clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
            self._peak = max(self._peak, peak)
        self._energy.push(downmix(block))

    def finish(self) -> AudioStats:
        frames = self._energy.samples
        sums = self._energy.finish()
        counts = np.full(sums.shape, self._frame, dtype=np.float64)
        if frames % self._frame:
            counts[-1] = frames % self._frame  # the last partial frame: mean over its own samples
        threshold = 10 ** (SILENCE_THRESHOLD_DB / 20.0)
        silent = np.count_nonzero(np.sqrt(sums / counts) < threshold) if sums.size else 0
        total = frames * self._channels
        return AudioStats(
            frames=frames,
            sample_rate=self._sample_rate,
            channels=self._channels,
            peak=self._peak,
            clipped_fraction=self._clipped / total if total else 0.0,
            silent_fraction=silent / sums.size if sums.size else 0.0,
            finite=self._finite,
        )
