"""Preprocessing of source files: decode, filter, slice, segment, normalise and write, one file per
worker thread, in memory bounded by the block size rather than by the file's length.

Threads, not processes: the work is in libsndfile, soxr, scipy's filter and numpy, which release the
GIL, so threads scale as processes did, without each worker paying ~0.8 CPU-s to import scipy.signal
(a quarter of a worker's CPU on 30 minutes of audio) and without a copy of the modules per worker.

Files up to `STREAM_ABOVE_SECONDS` are decoded whole and filtered block by block. Longer files that
libsndfile can read are streamed twice: a first pass computes statistics and the slicer's frame
energies, which fix every chunk; a second pass filters the file again (the chain is deterministic,
so it yields the same samples) and cuts those chunks as the blocks go by. That trades a second
decode for never holding more than a block and one chunk of a long recording.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_core.errors import UndecodableAudio
from rvc_core.preprocess.filters import SignalChain
from rvc_core.preprocess.framing import CenteredRms
from rvc_core.preprocess.records import (
    REJECT_ALL_CHUNKS_DROPPED,
    REJECT_NON_FINITE,
    REJECT_ONLY_SILENCE,
    REJECT_UNDECODABLE,
    FileStats,
    reason,
)
from rvc_core.preprocess.segmenter import ChunkPlan, plan_chunks
from rvc_core.preprocess.slicer import SlicerParams, slice_ranges
from rvc_core.preprocess.stats import AudioStats, StatsAccumulator
from rvc_core.preprocess.writer import ChunkCutter, SegmentWriter
from rvc_core.spec import SLICER_THRESHOLD_DB

if TYPE_CHECKING:
    from rvc_core.intake import SourceFile

STREAM_ABOVE_SECONDS = 600.0  # longer files readable by libsndfile are streamed, not loaded whole
BLOCK_FRAMES = 1 << 18  # source frames filtered per step (about 6 s at 44.1 kHz)


@dataclass(frozen=True)
class _Analysis:
    stats: AudioStats
    plan: ChunkPlan
    silent: bool  # the slicer found nothing but silence


def preprocess_file(
    source: SourceFile,
    sample_rate: int,
    segment_seconds: float,
    wav_dir: Path,
    wav16k_dir: Path,
    max_seconds: float | None = None,
) -> FileStats:
    """Preprocesses one source file into `wav_dir` / `wav16k_dir` and reports what it kept and why
    anything was dropped. A file that cannot be used comes back with status "rejected" and a reason;
    only unexpected failures (a full disk, a bug) raise. A file decoded whole in memory is read up
    to `max_seconds` (streamed files are read in blocks and need no bound)."""
    from rvc_core.audio_io import libsndfile_seconds

    path = Path(source.path)
    writer = SegmentWriter(source.id, source.speaker_id, sample_rate, wav_dir, wav16k_dir)
    try:
        # Files libsndfile reads are streamed in blocks when long; the rest are decoded whole.
        if (libsndfile_seconds(path) or 0.0) > STREAM_ABOVE_SECONDS:
            analysis = _preprocess_streaming(path, sample_rate, segment_seconds, writer)
        else:
            analysis = _preprocess_whole(path, sample_rate, segment_seconds, writer, max_seconds)
    except UndecodableAudio as exc:
        return _file_stats(source, None, writer, reason(REJECT_UNDECODABLE, exc.message))
    for chunk, why in analysis.plan.dropped:
        writer.drop(chunk, why)
    return _file_stats(source, analysis.stats, writer, _rejection(analysis, writer))


def preprocess_all(
    sources: Sequence[SourceFile],
    sample_rate: int,
    segment_seconds: float,
    wav_dir: Path,
    wav16k_dir: Path,
    *,
    workers: int | None = None,
    progress: Callable[[FileStats], None] | None = None,
    max_seconds: float | None = None,
) -> list[FileStats]:
    """`preprocess_file` for every source, in `workers` threads (default: one per CPU), with
    `progress` called in the calling thread as each file finishes. Results come back in input order."""
    workers = min(workers or os.cpu_count() or 1, len(sources))
    report = progress or (lambda _stats: None)
    args = (sample_rate, segment_seconds, Path(wav_dir), Path(wav16k_dir), max_seconds)
    if workers <= 1:
        results = []
        for source in sources:
            results.append(preprocess_file(source, *args))
            report(results[-1])
        return results
    out: list[FileStats | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Longest files first, so one long file does not start last and finish alone.
        order = sorted(range(len(sources)), key=lambda i: -sources[i].size_bytes)
        futures: dict[Future[FileStats], int] = {
            pool.submit(preprocess_file, sources[i], *args): i for i in order
        }
        try:
            for future in as_completed(futures):
                stats = future.result()
                out[futures[future]] = stats
                report(stats)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [stats for stats in out if stats is not None]


# --- the two ways through a file ----------------------------------------------------------------
def _preprocess_whole(
    path: Path, sample_rate: int, segment_seconds: float, writer: SegmentWriter, max_seconds: float | None
) -> _Analysis:
    from rvc_core.audio_io import probe_and_decode

    decoded = probe_and_decode(path, max_seconds)
    source_rate, samples = decoded.sample_rate, decoded.samples
    del decoded  # only the block views below keep the decoded samples alive
    views = [samples[i : i + BLOCK_FRAMES] for i in range(0, samples.shape[0], BLOCK_FRAMES)]
    channels = samples.shape[1]
    del samples
    analysis, signal = _first_pass(views, source_rate, channels, sample_rate, segment_seconds, keep=True)
    del views  # the last references to the decoded samples
    for chunk in analysis.plan.kept:
        writer.write(chunk, signal[chunk.start : chunk.end])
    return analysis


def _preprocess_streaming(
    path: Path, sample_rate: int, segment_seconds: float, writer: SegmentWriter
) -> _Analysis:
    import soundfile as sf

    info = sf.info(str(path))
    source_rate, channels = int(info.samplerate), int(info.channels)
    analysis, _ = _first_pass(
        _read_blocks(path), source_rate, channels, sample_rate, segment_seconds, keep=False
    )
    if analysis.stats.frames == 0:
        raise UndecodableAudio(f"{path.name}: the file decodes to no audio (zero samples)")
    cutter = ChunkCutter(analysis.plan.kept)
    if cutter.done:
        return analysis
    for filtered in _filtered_blocks(_read_blocks(path), source_rate, sample_rate):
        for chunk, samples in cutter.push(filtered):
            writer.write(chunk, samples)
        if cutter.done:
            return analysis
    raise UndecodableAudio(f"{path.name}: the file changed or decoded differently on a second read")


# --- shared steps --------------------------------------------------------------------------------
def _first_pass(
    blocks: Iterable[np.ndarray],
    source_rate: int,
    channels: int,
    sample_rate: int,
    segment_seconds: float,
    *,
    keep: bool,
) -> tuple[_Analysis, np.ndarray]:
    """Statistics, slices and the chunk plan of decoded `blocks`; with `keep`, also the whole
    filtered signal (else an empty array). A file with non-finite samples gets an empty plan."""
    stats = StatsAccumulator(source_rate, channels)
    params = SlicerParams.for_rate(sample_rate)
    rms = CenteredRms(params.hop, params.window)
    parts = []
    for filtered in _filtered_blocks(blocks, source_rate, sample_rate, on_block=stats.push):
        rms.push(filtered)
        if keep:
            parts.append(filtered)
    audio_stats = stats.finish()
    signal = np.concatenate(parts) if parts else np.zeros(0)
    del parts
    if not audio_stats.finite:
        return _Analysis(audio_stats, ChunkPlan((), ()), silent=False), signal
    n_samples = rms.samples
    slices = slice_ranges(rms.finish(), n_samples, params)
    plan = plan_chunks(slices, sample_rate, segment_seconds)
    return _Analysis(audio_stats, plan, silent=not slices), signal


def _filtered_blocks(
    blocks: Iterable[np.ndarray],
    source_rate: int,
    target_rate: int,
    on_block: Callable[[np.ndarray], None] | None = None,
) -> Iterator[np.ndarray]:
    """The signal chain over `blocks`, telling the resampler which block is the last."""
    chain = SignalChain(source_rate, target_rate)
    iterator = iter(blocks)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        if on_block is not None:
            on_block(current)
        yield chain.process(current, last=following is None)
        current = following


def _read_blocks(path: Path) -> Iterator[np.ndarray]:
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                yield block
    except sf.SoundFileError as exc:
        raise UndecodableAudio(f"{path.name}: {exc}") from None


def _rejection(analysis: _Analysis, writer: SegmentWriter) -> str | None:
    if writer.segments:
        return None
    if not analysis.stats.finite:
        return reason(REJECT_NON_FINITE, "the file contains NaN or infinite samples")
    if analysis.silent or not writer.dropped:
        return reason(
            REJECT_ONLY_SILENCE, f"nothing rises above the {SLICER_THRESHOLD_DB:g} dB silence threshold"
        )
    return reason(REJECT_ALL_CHUNKS_DROPPED, f"all {len(writer.dropped)} chunk(s) were dropped (see dropped)")


def _file_stats(
    source: SourceFile, stats: AudioStats | None, writer: SegmentWriter, why: str | None
) -> FileStats:
    return FileStats(
        source_id=source.id,
        original_name=source.original_name,
        speaker_id=source.speaker_id,
        seconds=stats.seconds if stats else 0.0,
        sample_rate=stats.sample_rate if stats else 0,
        channels=stats.channels if stats else 0,
        peak=stats.peak if stats else 0.0,
        clipped_fraction=stats.clipped_fraction if stats else 0.0,
        silent_fraction=stats.silent_fraction if stats else 0.0,
        used_seconds=sum(s.seconds for s in writer.segments),
        status="used" if why is None else "rejected",
        reason=why,
        segments=tuple(writer.segments),
        dropped=tuple(sorted(writer.dropped, key=lambda d: d.start_seconds)),
    )
