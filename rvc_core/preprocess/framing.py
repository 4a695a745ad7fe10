"""Frame energies computed block by block, identical however the signal is split into pieces.

Both the whole-file path and the streaming path feed these accumulators; because every block sum
is computed from the same samples in the same order, both paths see bit-identical frame energies
and therefore make identical slicing decisions.
"""

from __future__ import annotations

import math

import numpy as np

# Samples squared per numpy call: bounds the temporary array whatever size is pushed.
_SLAB_SAMPLES = 1 << 20


def _row_energies(rows: np.ndarray) -> np.ndarray:
    # One pass without a squared temporary (float64 inputs: the signal chain's output).
    rows = np.asarray(rows, dtype=np.float64)
    return np.einsum("ij,ij->i", rows, rows)


class BlockEnergy:
    """Sum of squares of every consecutive `block`-sample block of a 1-D signal fed in pieces."""

    def __init__(self, block: int) -> None:
        if block < 1:
            raise ValueError(f"block must be at least one sample, got {block}")
        self.block = block
        self.samples = 0  # pushed so far
        self._pending = np.zeros(0, dtype=np.float64)  # head of an unfinished block
        self._sums: list[np.ndarray] = []

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples).reshape(-1)
        self.samples += x.size
        if self._pending.size:
            need = self.block - self._pending.size
            self._pending = np.concatenate([self._pending, x[:need]])
            x = x[need:]
            if self._pending.size < self.block:
                return
            self._sums.append(_row_energies(self._pending.reshape(1, -1)))
            self._pending = np.zeros(0, dtype=np.float64)
        whole = x.size - x.size % self.block
        slab = max(self.block, _SLAB_SAMPLES - _SLAB_SAMPLES % self.block)
        for start in range(0, whole, slab):
            part = x[start : min(start + slab, whole)]
            self._sums.append(_row_energies(part.reshape(-1, self.block)))
        self._pending = np.asarray(x[whole:], dtype=np.float64).copy()

    def finish(self) -> np.ndarray:
        """Block sums; a last partial block counts as if zero-padded to a full block."""
        sums = list(self._sums)
        if self._pending.size:
            padded = np.zeros(self.block, dtype=np.float64)
            padded[: self._pending.size] = self._pending
            sums.append(_row_energies(padded.reshape(1, -1)))
        return np.concatenate(sums) if sums else np.zeros(0, dtype=np.float64)


class CenteredRms:
    """RMS of frames of `window` samples every `hop` samples, centred on `i * hop` with zero padding
    of `window // 2` at both ends (librosa's `rms(center=True, pad_mode="constant")`, which RVC's
    slicer uses). Frames are assembled from blocks of gcd(hop, window) samples."""

    def __init__(self, hop: int, window: int) -> None:
        self.hop = hop
        self.window = window
        self._energy = BlockEnergy(math.gcd(hop, window))
        self._pad = window // 2
        self._energy.push(np.zeros(self._pad))

    @property
    def samples(self) -> int:
        return self._energy.samples - self._pad

    def push(self, samples: np.ndarray) -> None:
        self._energy.push(samples)

    def finish(self) -> np.ndarray:
        """One RMS value per frame: `(n + 2 * (window // 2) - window) // hop + 1` frames."""
        n = self.samples
        self._energy.push(np.zeros(self._pad))
        sums = self._energy.finish()
        block = self._energy.block
        frames = (n + 2 * self._pad - self.window) // self.hop + 1
        if frames <= 0:
            return np.zeros(0, dtype=np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(sums, self.window // block)
        energy = windows[:: self.hop // block][:frames].sum(axis=1)
        return np.sqrt(energy / self.window)
