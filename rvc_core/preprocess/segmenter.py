"""Cutting slices into training chunks (RVC's recipe), keeping chunk lengths trainable, and the
per-chunk normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from rvc_core.preprocess.records import (
    DROP_NON_FINITE,
    DROP_PEAK_TOO_HIGH,
    DROP_SILENT,
    DROP_TOO_SHORT,
    reason,
)
from rvc_core.spec import (
    MAX_TRAINABLE_SECONDS,
    MIN_TRAINABLE_SECONDS,
    NORMALISE_ALPHA,
    NORMALISE_MAX_PEAK,
    NORMALISE_TARGET,
    SEGMENT_OVERLAP_SECONDS,
)


@dataclass(frozen=True)
class ChunkRange:
    """Samples [start, end) of the filtered target-rate signal."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ChunkPlan:
    kept: tuple[ChunkRange, ...]  # sorted by start (and by end)
    dropped: tuple[tuple[ChunkRange, str], ...]  # with the reason


def segment_slice(
    start: int,
    end: int,
    sample_rate: int,
    segment_seconds: float,
    overlap_seconds: float = SEGMENT_OVERLAP_SECONDS,
) -> list[ChunkRange]:
    """RVC's pieces of the slice [start, end): `segment_seconds` long, one every
    `segment_seconds - overlap` seconds while more than `segment_seconds + overlap` seconds remain,
    then the remainder."""
    length = end - start
    tail = (segment_seconds + overlap_seconds) * sample_rate
    piece = int(segment_seconds * sample_rate)
    pieces: list[ChunkRange] = []
    i = 0
    while True:
        offset = int(sample_rate * (segment_seconds - overlap_seconds) * i)
        i += 1
        if length - offset > tail:
            pieces.append(ChunkRange(start + offset, start + offset + piece))
        else:
            pieces.append(ChunkRange(start + offset, end))
            return pieces


def split_long(
    chunk: ChunkRange, sample_rate: int, max_seconds: float = MAX_TRAINABLE_SECONDS
) -> list[ChunkRange]:
    """`chunk` as is, or cut into equal consecutive parts of at most `max_seconds`."""
    if chunk.length <= max_seconds * sample_rate:
        return [chunk]
    parts = math.ceil(chunk.length / (max_seconds * sample_rate))
    bounds = [chunk.start + k * chunk.length // parts for k in range(parts + 1)]
    return [ChunkRange(a, b) for a, b in pairwise(bounds)]


def merge_short(
    chunks: Sequence[ChunkRange],
    sample_rate: int,
    min_seconds: float = MIN_TRAINABLE_SECONDS,
    max_seconds: float = MAX_TRAINABLE_SECONDS,
) -> ChunkPlan:
    """Chunks of one slice, with each too-short chunk absorbed by its previous (else next) neighbour
    when the union stays within `max_seconds`; otherwise dropped with a reason."""
    kept: list[ChunkRange] = []
    dropped: list[tuple[ChunkRange, str]] = []
    pending = list(chunks)
    i = 0
    while i < len(pending):
        chunk = pending[i]
        i += 1
        if chunk.length >= min_seconds * sample_rate:
            kept.append(chunk)
            continue
        if kept and (merged := ChunkRange(kept[-1].start, max(kept[-1].end, chunk.end))).length <= (
            max_seconds * sample_rate
        ):
            kept[-1] = merged
        elif i < len(pending) and (merged := ChunkRange(chunk.start, pending[i].end)).length <= (
            max_seconds * sample_rate
        ):
            pending[i] = merged
        else:
            detail = f"{chunk.length / sample_rate:.2f} s is under the {min_seconds} s minimum"
            dropped.append((chunk, reason(DROP_TOO_SHORT, detail)))
    return ChunkPlan(kept=tuple(kept), dropped=tuple(dropped))


def plan_chunks(slices: Sequence[tuple[int, int]], sample_rate: int, segment_seconds: float) -> ChunkPlan:
    """Every training chunk of a file from its sounding slices: RVC's pieces, long ones split, short
    ones merged into a neighbour from the same slice or dropped."""
    kept: list[ChunkRange] = []
    dropped: list[tuple[ChunkRange, str]] = []
    for start, end in slices:
        pieces = segment_slice(start, end, sample_rate, segment_seconds)
        trainable = [part for piece in pieces for part in split_long(piece, sample_rate)]
        plan = merge_short(trainable, sample_rate)
        kept.extend(plan.kept)
        dropped.extend(plan.dropped)
    return ChunkPlan(kept=tuple(kept), dropped=tuple(dropped))


def peak_problem(peak: float) -> str | None:
    """Why a chunk with this peak cannot be normalised (RVC skips these), or None."""
    if not math.isfinite(peak):
        return reason(DROP_NON_FINITE, "the chunk contains NaN or infinite samples")
    if peak > NORMALISE_MAX_PEAK:
        return reason(DROP_PEAK_TOO_HIGH, f"peak {peak:.2f} is above {NORMALISE_MAX_PEAK}")
    if peak == 0:
        return reason(DROP_SILENT, "the chunk is all zeros")
    return None


def normalise(samples: np.ndarray, peak: float) -> np.ndarray:
    """RVC's mix of peak-normalised and original audio: x/peak * 0.9 * 0.75 + 0.25 * x."""
    # The same mix folded into one gain: one pass over the chunk instead of four.
    return samples * (NORMALISE_TARGET * NORMALISE_ALPHA / peak + (1 - NORMALISE_ALPHA))
