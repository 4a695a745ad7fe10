"""What preprocessing reports per source file: kept segments, dropped chunks and file statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

FileStatus = Literal["used", "rejected"]

# Why a chunk was dropped. The reason string is "<code>: <detail>"; the code is stable.
DROP_TOO_SHORT = "too_short"
DROP_PEAK_TOO_HIGH = "peak_too_high"
DROP_NON_FINITE = "non_finite"
DROP_SILENT = "silent"

# Why a whole file was rejected, in the same "<code>: <detail>" form.
REJECT_UNDECODABLE = "undecodable_audio"
REJECT_NON_FINITE = "non_finite_samples"
REJECT_ONLY_SILENCE = "only_silence"
REJECT_ALL_CHUNKS_DROPPED = "all_chunks_dropped"


def reason(code: str, detail: str) -> str:
    return f"{code}: {detail}"


def reason_code(text: str) -> str:
    """The stable code at the front of a reason string."""
    return text.split(":", 1)[0]


@dataclass(frozen=True)
class Segment:
    """One training chunk written as `<id>.wav` at the target rate and at 16 kHz."""

    id: str
    speaker_id: int
    source_id: str
    start_seconds: float  # from the start of the source file
    seconds: float


@dataclass(frozen=True)
class DroppedChunk:
    """A piece of voiced audio that was not kept, and why."""

    source_id: str
    start_seconds: float  # from the start of the source file
    seconds: float
    reason: str  # "<code>: <detail>", code one of the DROP_* constants


@dataclass(frozen=True)
class FileStats:
    """Statistics of one decoded source file (before filtering) and what preprocessing made of it."""

    source_id: str
    original_name: str
    speaker_id: int
    seconds: float  # decoded duration
    sample_rate: int  # Hz, the file's own rate
    channels: int
    peak: float  # largest |sample| over all channels (finite samples only)
    clipped_fraction: float  # share of samples, all channels, with |x| >= CLIP_LEVEL
    silent_fraction: float  # share of 15 ms frames of the mono mix under the slicer's threshold
    used_seconds: float  # sum of the kept segments' durations (their 0.3 s overlaps count twice)
    status: FileStatus
    reason: str | None  # "<code>: <detail>" when rejected, code one of the REJECT_* constants
    segments: tuple[Segment, ...]
    dropped: tuple[DroppedChunk, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileStats:
        return cls(
            **{
                **data,
                "segments": tuple(Segment(**s) for s in data["segments"]),
                "dropped": tuple(DroppedChunk(**d) for d in data["dropped"]),
            }
        )
