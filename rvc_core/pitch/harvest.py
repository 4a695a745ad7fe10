"""`harvest`: WORLD's Harvest (pyworld) refined by StoneMask, on float64 input.

Harvest with a 10 ms frame period at 16 kHz already yields `n // 160 + 1` frames centred at
i * 10 ms, the project's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rvc_core.pitch.base import FRAME_SECONDS, SAMPLE_RATE, as_mono_clip, fit_to_grid
from rvc_core.spec import F0_MAX, F0_MIN


class HarvestExtractor:
    method = "harvest"

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._one(as_mono_clip(x)) for x in batch]

    def _one(self, clip: np.ndarray) -> np.ndarray:
        import pyworld

        if clip.size == 0:  # WORLD cannot allocate for an empty signal
            return fit_to_grid(np.zeros(0), 0)
        x = clip.astype(np.float64)
        f0, times = pyworld.harvest(
            x, SAMPLE_RATE, f0_floor=F0_MIN, f0_ceil=F0_MAX, frame_period=FRAME_SECONDS * 1000
        )
        return fit_to_grid(pyworld.stonemask(x, f0, times, SAMPLE_RATE), clip.size)
