"""`pm`: Praat's autocorrelation pitch (parselmouth), placed on the project's frame grid.

Praat's frames do not start at t = 0: the first is centred where its analysis window (3 periods of
the 50 Hz floor, 60 ms) first fits, often half a step off our grid. So values are moved onto the
grid by the times Praat reports (see `place_on_grid`); grid frames beyond Praat's first and last
frame by more than half a step are unvoiced.
A clip too short for one analysis window is all unvoiced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rvc_core.pitch.base import FRAME_SECONDS, SAMPLE_RATE, as_mono_clip, fit_to_grid, frame_count
from rvc_core.spec import F0_MAX, F0_MIN

VOICING_THRESHOLD = 0.6
PERIODS_PER_WINDOW = 3.0  # Praat's default for `To Pitch (ac)`


def place_on_grid(times: np.ndarray, values: np.ndarray, n_frames: int) -> np.ndarray:
    """Values at `times` (s, evenly spaced by FRAME_SECONDS; 0 = unvoiced) moved to the grid
    frames i * 10 ms: linear interpolation between two voiced neighbours, otherwise the nearer
    neighbour (so voicing edges move by at most half a step); 0 beyond the first and last."""
    if times.size == 0:
        return np.zeros(n_frames, dtype=np.float64)
    position = (np.arange(n_frames) * FRAME_SECONDS - times[0]) / FRAME_SECONDS  # in Praat frames
    lower = np.floor(position).astype(np.int64)
    frac = position - lower
    padded = np.concatenate([[0.0], values, [0.0]])  # unvoiced just outside Praat's frames

    def value_at(index: np.ndarray) -> np.ndarray:
        return padded[np.clip(index, -1, values.size) + 1]

    below, above = value_at(lower), value_at(lower + 1)
    nearer = np.where(frac <= 0.5, below, above)
    return np.where((below > 0) & (above > 0), below + frac * (above - below), nearer)


class PraatExtractor:
    method = "pm"

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._one(as_mono_clip(x)) for x in batch]

    def _one(self, clip: np.ndarray) -> np.ndarray:
        import parselmouth

        n_frames = frame_count(clip.size)
        if clip.size / SAMPLE_RATE < PERIODS_PER_WINDOW / F0_MIN:
            return fit_to_grid(np.zeros(n_frames), clip.size)
        pitch = parselmouth.Sound(clip.astype(np.float64), sampling_frequency=SAMPLE_RATE).to_pitch_ac(
            time_step=FRAME_SECONDS,
            voicing_threshold=VOICING_THRESHOLD,
            pitch_floor=F0_MIN,
            pitch_ceiling=F0_MAX,
        )
        values = pitch.selected_array["frequency"]
        return fit_to_grid(place_on_grid(np.asarray(pitch.xs()), values, n_frames), clip.size)
