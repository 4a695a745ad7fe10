"""The dataset's length against the most audio a job may prepare.

Preparing audio costs scratch space in proportion to its length (segments, features, the index:
docs/workdir.md), and on Cloud Run scratch is the instance's memory. So a caller that knows its
scratch budget passes the longest dataset it can hold, and a longer one is refused before any
segment is written, with the figures, rather than failing hours later out of memory.

Two checks: the files' headers, probed right after extraction (cheap, and before any work), and the
decoded durations as preprocessing goes, since a header can understate its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rvc_core.audio_io import probe_seconds
from rvc_core.errors import TooMuchAudio

# Decoded lengths may exceed the headers' by this share before the second check refuses the
# dataset (an MP3's bitrate estimate, encoder padding), so a dataset the probe admitted at the
# limit is not refused midway for rounding.
DECODED_TOLERANCE = 0.05
# ffprobe runs take ~0.05-0.1 s each and wait on a subprocess: a few at once, for datasets of
# hundreds of MP3s.
PROBES_AT_ONCE = 4


def check_probed_length(paths: Sequence[Path], max_seconds: float | None) -> float:
    """Refuses `paths` whose headers add up to more than `max_seconds`; returns the probed total
    (files whose length is unknown count as 0 here and are caught while decoding)."""
    if max_seconds is None:
        return 0.0
    with ThreadPoolExecutor(max_workers=PROBES_AT_ONCE) as pool:
        total = sum(seconds or 0.0 for seconds in pool.map(probe_seconds, paths))
    if total > max_seconds:
        raise TooMuchAudio(_message(total, max_seconds, len(paths)))
    return total


def check_decoded_length(seconds: Iterable[float], max_seconds: float | None) -> None:
    """Refuses when the files decoded so far already exceed the limit (with the tolerance)."""
    if max_seconds is None:
        return
    durations = list(seconds)
    total = sum(durations)
    if total > max_seconds * (1 + DECODED_TOLERANCE):
        raise TooMuchAudio(_message(total, max_seconds, len(durations), decoded=True))


def decode_bound(max_seconds: float | None) -> float | None:
    """The most of one file worth decoding: just past what `check_decoded_length` refuses, so a
    file whose header understates its length is refused without being decoded whole."""
    return None if max_seconds is None else max_seconds * (1 + DECODED_TOLERANCE) + 1.0


def _message(total: float, limit: float, files: int, *, decoded: bool = False) -> str:
    measured = f"the first {files} file(s) decode to" if decoded else f"the {files} audio file(s) hold"
    return (
        f"{measured} {total / 60:.1f} minutes of audio; at most {limit / 60:.1f} minutes are "
        "accepted here, because preparing audio takes scratch space in proportion to its length. "
        "Upload a shorter selection (RVC models are usually trained on 10 to 60 minutes) or split "
        "it into several models"
    )
