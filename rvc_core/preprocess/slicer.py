"""RVC's silence slicer (the `Slicer` of its preprocessing) over precomputed RMS frames.

Same semantics as RVC's frame-by-frame loop, but it visits each run of silent frames once: a
cut can only happen where a silent run ends, and the only state carried between runs is where
the current clip started.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from rvc_core.spec import (
    SLICER_HOP_MS,
    SLICER_MAX_SILENCE_KEPT_MS,
    SLICER_MIN_INTERVAL_MS,
    SLICER_MIN_LENGTH_MS,
    SLICER_THRESHOLD_DB,
)


@dataclass(frozen=True)
class SlicerParams:
    """The slicer's numbers converted to samples and frames with RVC's rounding."""

    threshold: float  # linear RMS amplitude; frames strictly below it are silent
    hop: int  # samples per frame step
    window: int  # samples per RMS frame
    min_length: int  # frames: a clip shorter than this is not cut off
    min_interval: int  # frames: a shorter silence is not cut
    max_silence_kept: int  # frames of silence kept around a cut

    @classmethod
    def for_rate(
        cls,
        sample_rate: int,
        *,
        threshold_db: float = SLICER_THRESHOLD_DB,
        min_length_ms: float = SLICER_MIN_LENGTH_MS,
        min_interval_ms: float = SLICER_MIN_INTERVAL_MS,
        hop_ms: float = SLICER_HOP_MS,
        max_silence_kept_ms: float = SLICER_MAX_SILENCE_KEPT_MS,
    ) -> SlicerParams:
        if not min_length_ms >= min_interval_ms >= hop_ms:
            raise ValueError("the slicer needs min_length_ms >= min_interval_ms >= hop_ms")
        if not max_silence_kept_ms >= hop_ms:
            raise ValueError("the slicer needs max_silence_kept_ms >= hop_ms")
        interval_samples = sample_rate * min_interval_ms / 1000
        hop = round(sample_rate * hop_ms / 1000)
        return cls(
            threshold=10 ** (threshold_db / 20.0),
            hop=hop,
            window=min(round(interval_samples), 4 * hop),
            min_length=round(sample_rate * min_length_ms / 1000 / hop),
            min_interval=round(interval_samples / hop),
            max_silence_kept=round(sample_rate * max_silence_kept_ms / 1000 / hop),
        )


def silent_runs(rms: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(first, end) frame indices, end exclusive, of every maximal run of frames below `threshold`."""
    silent = np.concatenate([[False], rms < threshold, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def _argmin(rms: np.ndarray, first: int, end: int) -> int:
    """Index of the quietest frame in rms[first:end] (the first one on ties)."""
    return first + int(np.argmin(rms[first:end]))


def silence_cuts(rms: np.ndarray, p: SlicerParams) -> list[tuple[int, int]]:
    """RVC's silence tags: (first, end) frame ranges to remove, in order."""
    total = rms.shape[0]
    keep = p.max_silence_kept
    cuts: list[tuple[int, int]] = []
    clip_start = 0
    for start, end in silent_runs(rms, p.threshold):
        if end == total:  # trailing silence: cut it if long enough, keeping up to `keep` frames
            if total - start >= p.min_interval:
                pos = _argmin(rms, start, min(total, start + keep) + 1)
                cuts.append((pos, total + 1))
            break
        leading = start == 0 and end > keep
        in_middle = end - start >= p.min_interval and end - clip_start >= p.min_length
        if not (leading or in_middle):
            continue
        if end - start <= keep:  # short silence: one cut at its quietest frame
            pos = _argmin(rms, start, end + 1)
            cuts.append((0, pos) if start == 0 else (pos, pos))
            clip_start = pos
        elif end - start <= 2 * keep:  # medium: keep up to `keep` frames each side
            pos = _argmin(rms, end - keep, start + keep + 1)
            left = _argmin(rms, start, start + keep + 1)
            right = _argmin(rms, end - keep, end + 1)
            if start == 0:
                cuts.append((0, right))
                clip_start = right
            else:
                cuts.append((min(left, pos), max(right, pos)))
                clip_start = max(right, pos)
        else:  # long: remove all but `keep` frames at each side
            left = _argmin(rms, start, start + keep + 1)
            right = _argmin(rms, end - keep, end + 1)
            cuts.append((0, right) if start == 0 else (left, right))
            clip_start = right
    return cuts


def slice_ranges(rms: np.ndarray, n_samples: int, p: SlicerParams) -> list[tuple[int, int]]:
    """The sounding parts as (start, end) sample ranges, end exclusive, from the frame RMS of a
    signal of `n_samples` samples (as computed by `framing.CenteredRms(p.hop, p.window)`)."""
    # RVC compares the sample count with a frame count here; kept for identical results.
    if n_samples <= p.min_length:
        return [(0, n_samples)] if n_samples else []
    cuts = silence_cuts(rms, p)
    if not cuts:
        return [(0, n_samples)]
    total = rms.shape[0]
    frames: list[tuple[int, int]] = []
    if cuts[0][0] > 0:
        frames.append((0, cuts[0][0]))
    frames.extend((a[1], b[0]) for a, b in pairwise(cuts))
    if cuts[-1][1] < total:
        frames.append((cuts[-1][1], total))
    ranges = [(first * p.hop, min(n_samples, end * p.hop)) for first, end in frames]
    return [(s, e) for s, e in ranges if e > s]
