"""Turning planned chunks into files: cutting them out of a (streamed) signal, normalising, and
writing the target-rate and 16 kHz copies atomically."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rvc_core.audio_io import write_wav_float32
from rvc_core.preprocess.filters import to_feature_rate
from rvc_core.preprocess.records import DroppedChunk, Segment
from rvc_core.preprocess.segmenter import ChunkRange, normalise, peak_problem
from rvc_core.spec import FEATURE_SAMPLE_RATE


class ChunkCutter:
    """Cuts sorted, possibly overlapping chunk ranges out of a signal that arrives in blocks, holding
    only the samples from the next unfinished chunk's start onwards."""

    def __init__(self, chunks: Sequence[ChunkRange]) -> None:
        self._chunks = list(chunks)
        self._next = 0
        self._buffer = np.zeros(0, dtype=np.float64)
        self._buffer_start = 0  # signal index of self._buffer[0]

    @property
    def done(self) -> bool:
        return self._next == len(self._chunks)

    def push(self, block: np.ndarray) -> Iterator[tuple[ChunkRange, np.ndarray]]:
        """Every chunk that `block` completes, with its samples."""
        buffered_end = self._buffer_start + self._buffer.size
        keep_from = buffered_end if self.done else self._chunks[self._next].start
        drop = max(0, keep_from - self._buffer_start)
        if drop >= self._buffer.size:  # nothing buffered is needed: skip into the block directly
            skip = min(block.size, drop - self._buffer.size)
            self._buffer_start += self._buffer.size + skip
            self._buffer = block[skip:]
        else:
            self._buffer_start += drop
            self._buffer = np.concatenate([self._buffer[drop:], block])
        end = self._buffer_start + self._buffer.size
        while not self.done and self._chunks[self._next].end <= end:
            chunk = self._chunks[self._next]
            yield chunk, self._buffer[chunk.start - self._buffer_start : chunk.end - self._buffer_start]
            self._next += 1


class SegmentWriter:
    """Normalises each chunk and writes `<id>.wav` at the target rate and at 16 kHz, or records why
    the chunk was dropped. Ids are `<speaker>_<file>_<n:04d>`, n counting this file's segments."""

    def __init__(
        self, source_id: str, speaker_id: int, sample_rate: int, wav_dir: Path, wav16k_dir: Path
    ) -> None:
        self._source_id = source_id
        self._speaker_id = speaker_id
        self._sample_rate = sample_rate
        self._wav_dir = Path(wav_dir)
        self._wav16k_dir = Path(wav16k_dir)
        self.segments: list[Segment] = []
        self.dropped: list[DroppedChunk] = []

    def drop(self, chunk: ChunkRange, why: str) -> None:
        self.dropped.append(
            DroppedChunk(
                source_id=self._source_id,
                start_seconds=chunk.start / self._sample_rate,
                seconds=chunk.length / self._sample_rate,
                reason=why,
            )
        )

    def write(self, chunk: ChunkRange, samples: np.ndarray) -> None:
        peak = float(np.max(np.abs(samples)))
        problem = peak_problem(peak)
        if problem is not None:
            self.drop(chunk, problem)
            return
        audio = normalise(samples, peak).astype(np.float32)
        segment_id = f"{self._speaker_id}_{self._source_id}_{len(self.segments):04d}"
        write_wav_float32(self._wav_dir / f"{segment_id}.wav", audio, self._sample_rate)
        write_wav_float32(
            self._wav16k_dir / f"{segment_id}.wav",
            to_feature_rate(audio, self._sample_rate),
            FEATURE_SAMPLE_RATE,
        )
        self.segments.append(
            Segment(
                id=segment_id,
                speaker_id=self._speaker_id,
                source_id=self._source_id,
                start_seconds=chunk.start / self._sample_rate,
                seconds=chunk.length / self._sample_rate,
            )
        )
