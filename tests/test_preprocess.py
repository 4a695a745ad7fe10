"""Preprocessing (RVC.md §2): slicer, segmenter, normalisation, filters, statistics, files and workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_core.intake import SourceFile
from rvc_core.preprocess import FileStats, preprocess_all, preprocess_file
from rvc_core.preprocess import runner as preprocess_runner
from rvc_core.preprocess.filters import HighPass, SignalChain
from rvc_core.preprocess.framing import CenteredRms
from rvc_core.preprocess.records import reason_code
from rvc_core.preprocess.segmenter import ChunkRange, merge_short, normalise, plan_chunks, segment_slice
from rvc_core.preprocess.slicer import SlicerParams, slice_ranges
from rvc_core.preprocess.writer import ChunkCutter, SegmentWriter
from rvc_core.spec import MAX_TRAINABLE_SECONDS, MIN_TRAINABLE_SECONDS
from rvc_core.testing import synthetic_voice

SR = 40000  # Hz, the target rate of every test
PARAMS = SlicerParams.for_rate(SR)
HOP = PARAMS.hop  # 15 ms
HALF_WINDOW = PARAMS.window // 2  # a frame "hears" a sound this far before and after it
KEPT = PARAMS.max_silence_kept * HOP  # samples of silence kept before a sound (0.5 s in whole frames)


# --- helpers -------------------------------------------------------------------------------------------
def tone(seconds: float, freq: float = 220.0, amplitude: float = 0.5, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def silence(seconds: float, sample_rate: int = SR) -> np.ndarray:
    return np.zeros(round(seconds * sample_rate))


def slices_of(signal: np.ndarray) -> list[tuple[int, int]]:
    rms = CenteredRms(PARAMS.hop, PARAMS.window)
    rms.push(signal)
    return slice_ranges(rms.finish(), signal.size, PARAMS)


def seconds(n: float) -> int:
    return round(n * SR)


def write_source(
    folder: Path,
    name: str,
    samples: np.ndarray,
    sample_rate: int = SR,
    *,
    subtype: str = "FLOAT",
    speaker: int = 0,
) -> SourceFile:
    path = folder / name
    sf.write(path, samples, sample_rate, subtype=subtype)
    return SourceFile(
        id=path.stem, original_name=name, path=path, speaker_id=speaker, size_bytes=path.stat().st_size
    )


def run_file(tmp_path: Path, source: SourceFile, segment_seconds: float = 3.7) -> FileStats:
    return preprocess_file(source, SR, segment_seconds, tmp_path / "wav", tmp_path / "wav16k")


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# --- silence slicer ------------------------------------------------------------------------------------
def test_silence_longer_than_min_interval_is_cut_at_its_quietest_point() -> None:
    signal = np.concatenate([tone(2.0), silence(0.48), tone(2.0)])
    first, second = slices_of(signal)
    # One cut: at the first frame that no longer hears the first tone.
    assert first[1] == second[0]
    assert abs(first[1] - (seconds(2.0) + HALF_WINDOW)) <= HOP


def test_silence_shorter_than_min_interval_is_not_cut() -> None:
    signal = np.concatenate([tone(2.0), silence(0.3), tone(2.0)])
    assert slices_of(signal) == [(0, signal.size)]


def test_long_silence_is_removed_keeping_half_a_second_before_the_next_sound() -> None:
    signal = np.concatenate([tone(2.0), silence(2.0), tone(2.0)])
    first, second = slices_of(signal)
    assert abs(first[1] - (seconds(2.0) + HALF_WINDOW)) <= HOP
    assert abs(second[0] - (seconds(4.0) - HALF_WINDOW - KEPT)) <= HOP
    assert second[1] == signal.size


def test_sound_shorter_than_min_length_is_not_cut_off_its_neighbour() -> None:
    signal = np.concatenate([tone(0.6), silence(0.5), tone(3.0)])
    assert slices_of(signal) == [(0, signal.size)]


def test_leading_and_trailing_silence_are_trimmed() -> None:
    signal = np.concatenate([silence(1.5), tone(2.0), silence(1.5)])
    [(start, end)] = slices_of(signal)
    assert abs(start - (seconds(1.5) - HALF_WINDOW - KEPT)) <= HOP
    assert abs(end - (seconds(3.5) + HALF_WINDOW)) <= HOP


def test_frame_rms_matches_librosa_centred_rms() -> None:
    import librosa

    signal = np.random.default_rng(0).standard_normal(seconds(1.3)) * np.linspace(0, 1, seconds(1.3))
    rms = CenteredRms(PARAMS.hop, PARAMS.window)
    rms.push(signal)
    expected = librosa.feature.rms(
        y=signal, frame_length=PARAMS.window, hop_length=PARAMS.hop, center=True, pad_mode="constant"
    )[0]
    np.testing.assert_allclose(rms.finish(), expected, rtol=1e-6)


def test_frame_rms_does_not_depend_on_how_the_signal_is_split() -> None:
    signal = np.random.default_rng(1).standard_normal(seconds(2.0))
    whole = CenteredRms(PARAMS.hop, PARAMS.window)
    whole.push(signal)
    pieces = CenteredRms(PARAMS.hop, PARAMS.window)
    for start in range(0, signal.size, 1001):
        pieces.push(signal[start : start + 1001])
    np.testing.assert_array_equal(pieces.finish(), whole.finish())


# --- segmenting ----------------------------------------------------------------------------------------
def test_long_slice_is_cut_into_segment_long_pieces_every_segment_minus_overlap() -> None:
    pieces = segment_slice(0, seconds(20.0), SR, 3.7)
    assert [p.start for p in pieces] == [int(SR * 3.4 * i) for i in range(len(pieces))]
    assert all(p.length == int(3.7 * SR) for p in pieces[:-1])
    assert pieces[-1].end == seconds(20.0)
    assert pieces[-1].length <= seconds(4.0)


def test_slice_no_longer_than_segment_plus_overlap_stays_one_chunk() -> None:
    assert segment_slice(seconds(1.0), seconds(4.9), SR, 3.7) == [ChunkRange(seconds(1.0), seconds(4.9))]


def test_short_remainder_is_merged_into_the_previous_chunk() -> None:
    plan = plan_chunks([(0, seconds(4.1))], SR, 3.7)  # pieces 0-3.7 s and a 0.7 s remainder at 3.4 s
    assert plan.kept == (ChunkRange(0, seconds(4.1)),)
    assert plan.dropped == ()


def test_short_first_chunk_is_merged_into_the_next() -> None:
    plan = merge_short([ChunkRange(0, seconds(0.5)), ChunkRange(seconds(0.5), seconds(3.0))], SR)
    assert plan.kept == (ChunkRange(0, seconds(3.0)),)


def test_lone_short_slice_is_dropped_with_its_reason_and_length() -> None:
    plan = plan_chunks([(seconds(2.0), seconds(2.5))], SR, 3.7)
    assert plan.kept == ()
    [(chunk, why)] = plan.dropped
    assert chunk == ChunkRange(seconds(2.0), seconds(2.5))
    assert reason_code(why) == "too_short"


def test_short_chunk_is_dropped_when_merging_would_exceed_the_maximum() -> None:
    plan = merge_short([ChunkRange(0, seconds(6.5)), ChunkRange(seconds(6.5), seconds(7.0))], SR)
    assert plan.kept == (ChunkRange(0, seconds(6.5)),)
    assert [chunk for chunk, _ in plan.dropped] == [ChunkRange(seconds(6.5), seconds(7.0))]


def test_long_segment_setting_still_gives_trainable_chunks_covering_the_slice() -> None:
    plan = plan_chunks([(0, seconds(25.0))], SR, 10.0)
    assert all(MIN_TRAINABLE_SECONDS * SR <= c.length <= MAX_TRAINABLE_SECONDS * SR for c in plan.kept)
    assert plan.kept[0].start == 0 and plan.kept[-1].end == seconds(25.0)
    assert all(a.end >= b.start for a, b in zip(plan.kept, plan.kept[1:], strict=False))


# --- normalisation ---------------------------------------------------------------------------------------
def test_normalisation_mixes_peak_normalised_and_original_audio() -> None:
    x = tone(0.5, amplitude=0.4)
    y = normalise(x, 0.4)
    np.testing.assert_allclose(y, x / 0.4 * 0.9 * 0.75 + 0.25 * x)
    assert np.max(np.abs(y)) == pytest.approx(0.9 * 0.75 + 0.25 * 0.4)


@pytest.mark.parametrize(
    ("samples", "code"),
    [
        (tone(1.0, amplitude=3.0), "peak_too_high"),
        (silence(1.0), "silent"),
        (np.full(SR, np.nan), "non_finite"),
    ],
)
def test_chunk_that_cannot_be_normalised_is_skipped_with_reason(
    tmp_path: Path, samples: np.ndarray, code: str
) -> None:
    writer = SegmentWriter("f0001", 0, SR, tmp_path / "wav", tmp_path / "wav16k")
    writer.write(ChunkRange(0, samples.size), samples)
    assert writer.segments == []
    assert [reason_code(d.reason) for d in writer.dropped] == [code]
    assert files_under(tmp_path) == set()


# --- signal chain ------------------------------------------------------------------------------------------
def test_highpass_removes_a_20hz_tone_and_keeps_a_200hz_tone() -> None:
    def level_after_filter(freq: float) -> float:
        out = HighPass(SR)(tone(3.0, freq=freq))
        return float(np.sqrt(np.mean(out[seconds(1.0) :] ** 2)) / np.sqrt(np.mean(tone(1.0, freq=freq) ** 2)))

    assert level_after_filter(20.0) < 0.05
    assert level_after_filter(200.0) > 0.95


def test_chain_resamples_to_the_target_rate() -> None:
    source = tone(2.0, freq=440.0, sample_rate=44100)[:, None]
    out = SignalChain(44100, SR).process(source, last=True)
    assert abs(out.size - seconds(2.0)) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert np.fft.rfftfreq(out.size, 1 / SR)[np.argmax(spectrum)] == pytest.approx(440.0, abs=1.0)


def test_chunk_cutter_returns_each_range_exactly_from_blocks_of_any_size() -> None:
    rng = np.random.default_rng(2)
    signal = rng.standard_normal(50_000)
    chunks = [
        ChunkRange(100, 9_000),
        ChunkRange(8_000, 20_000),
        ChunkRange(30_000, 31_000),
        ChunkRange(31_000, 50_000),
    ]
    cutter = ChunkCutter(chunks)
    got = []
    start = 0
    while start < signal.size:
        size = int(rng.integers(1, 7_000))
        got.extend((c, s.copy()) for c, s in cutter.push(signal[start : start + size]))
        start += size
    assert [c for c, _ in got] == chunks
    for chunk, samples in got:
        np.testing.assert_array_equal(samples, signal[chunk.start : chunk.end])


# --- one file ----------------------------------------------------------------------------------------
def test_segments_are_written_at_the_target_rate_with_16k_copies_of_matching_length(tmp_path: Path) -> None:
    voice = synthetic_voice(12.0, 44100, seed=1)
    source = write_source(tmp_path, "voice.wav", np.stack([voice, 0.5 * voice], 1), 44100, subtype="PCM_16")
    stats = run_file(tmp_path, source)
    assert stats.status == "used" and stats.segments
    for segment in stats.segments:
        full, full_rate = sf.read(tmp_path / "wav" / f"{segment.id}.wav", dtype="float32")
        low, low_rate = sf.read(tmp_path / "wav16k" / f"{segment.id}.wav", dtype="float32")
        assert (full_rate, low_rate) == (SR, 16000)
        assert full.size == round(segment.seconds * SR)
        assert abs(low.size - full.size * 16000 / SR) <= 1


def test_segment_ids_name_speaker_file_and_a_counter(tmp_path: Path) -> None:
    source = write_source(tmp_path, "f0007.wav", synthetic_voice(10.0, SR, seed=2), speaker=3)
    stats = run_file(tmp_path, source)
    assert [s.id for s in stats.segments] == [f"3_f0007_{n:04d}" for n in range(len(stats.segments))]
    assert stats.used_seconds == pytest.approx(sum(s.seconds for s in stats.segments))


def test_written_segments_are_normalised(tmp_path: Path) -> None:
    source = write_source(tmp_path, "quiet.wav", tone(3.0, amplitude=0.1))
    [segment] = run_file(tmp_path, source).segments
    samples, _ = sf.read(tmp_path / "wav" / f"{segment.id}.wav")
    # The peak after the high-pass is still about 0.1; normalised: 0.9 * 0.75 + 0.25 * 0.1.
    assert np.max(np.abs(samples)) == pytest.approx(0.9 * 0.75 + 0.25 * 0.1, abs=0.01)


def test_clipped_fraction_counts_samples_at_full_scale_over_all_channels(tmp_path: Path) -> None:
    left, right = tone(2.0, amplitude=0.5), tone(2.0, amplitude=0.5)
    left[:400] = 1.0
    right[1000:1100] = -0.9995
    left[2000:2300] = 0.998  # loud, but not clipped
    stats = run_file(tmp_path, write_source(tmp_path, "clip.wav", np.stack([left, right], 1)))
    assert stats.clipped_fraction == pytest.approx(500 / (2 * left.size))
    assert stats.peak == pytest.approx(1.0)


def test_silent_fraction_is_the_share_of_quiet_frames(tmp_path: Path) -> None:
    stats = run_file(
        tmp_path, write_source(tmp_path, "mostly_silent.wav", np.concatenate([tone(1.0), silence(3.0)]))
    )
    assert stats.silent_fraction == pytest.approx(0.75, abs=2 * 0.015 / 4.0)
    assert stats.seconds == pytest.approx(4.0)
    assert (stats.sample_rate, stats.channels) == (SR, 1)


def test_file_with_non_finite_samples_is_rejected_and_writes_nothing(tmp_path: Path) -> None:
    samples = tone(3.0)
    samples[SR] = np.nan
    stats = run_file(tmp_path, write_source(tmp_path, "nan.wav", samples))
    assert stats.status == "rejected"
    assert reason_code(stats.reason or "") == "non_finite_samples"
    assert files_under(tmp_path / "wav") | files_under(tmp_path / "wav16k") == set()


def test_undecodable_file_is_rejected_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    source = SourceFile(id="noise", original_name="noise.wav", path=path, speaker_id=0, size_bytes=240)
    stats = run_file(tmp_path, source)
    assert stats.status == "rejected"
    assert reason_code(stats.reason or "") == "undecodable_audio"


def test_silent_file_is_rejected_as_only_silence(tmp_path: Path) -> None:
    stats = run_file(tmp_path, write_source(tmp_path, "silent.wav", silence(3.0)))
    assert (stats.status, reason_code(stats.reason or "")) == ("rejected", "only_silence")


def test_file_whose_only_sound_is_too_short_reports_the_dropped_chunk(tmp_path: Path) -> None:
    stats = run_file(tmp_path, write_source(tmp_path, "blip.wav", np.concatenate([tone(0.1), silence(2.0)])))
    assert (stats.status, reason_code(stats.reason or "")) == ("rejected", "all_chunks_dropped")
    [dropped] = stats.dropped
    assert reason_code(dropped.reason) == "too_short"
    assert dropped.start_seconds == 0.0
    # The blip plus the high-pass filter's ringing after it, still under the trainable minimum.
    assert 0.1 <= dropped.seconds < MIN_TRAINABLE_SECONDS


def test_file_stats_survive_a_json_round_trip(tmp_path: Path) -> None:
    audio = np.concatenate([synthetic_voice(8.0, SR, seed=4), silence(1.0), tone(0.1)])
    stats = run_file(tmp_path, write_source(tmp_path, "mixed.wav", audio))
    assert stats.segments and stats.dropped
    assert FileStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats


def test_streaming_a_long_file_gives_the_same_segments_as_loading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice = synthetic_voice(25.0, 44100, seed=5)
    source = write_source(tmp_path, "long.wav", np.stack([voice, 0.7 * voice], 1), 44100, subtype="PCM_16")
    whole = preprocess_file(source, SR, 3.7, tmp_path / "whole" / "wav", tmp_path / "whole" / "wav16k")

    monkeypatch.setattr(preprocess_runner, "STREAM_ABOVE_SECONDS", 1.0)
    monkeypatch.setattr(preprocess_runner, "BLOCK_FRAMES", 10_007)

    def no_whole_file_decoding(path: Path) -> None:
        raise AssertionError("a long file must be streamed, not decoded whole")

    monkeypatch.setattr("rvc_core.audio_io.probe_and_decode", no_whole_file_decoding)
    streamed = preprocess_file(
        source, SR, 3.7, tmp_path / "streamed" / "wav", tmp_path / "streamed" / "wav16k"
    )

    assert streamed == whole
    for segment in whole.segments:
        for folder in ("wav", "wav16k"):
            a, _ = sf.read(tmp_path / "whole" / folder / f"{segment.id}.wav")
            b, _ = sf.read(tmp_path / "streamed" / folder / f"{segment.id}.wav")
            np.testing.assert_allclose(b, a, atol=1e-6)


# --- many files in worker processes ------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_worker_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[SourceFile], list[FileStats], list[str]]:
    root = tmp_path_factory.mktemp("two_workers")
    (root / "sources").mkdir()
    # Ascending sizes: the pool starts the longest first, so completion order differs from input order.
    sources = [
        write_source(
            root / "sources", f"f{i:04d}.wav", synthetic_voice(2.0 + 2 * i, SR, seed=i), speaker=i % 2
        )
        for i in range(4)
    ]
    finished: list[str] = []
    results = preprocess_all(
        sources, SR, 3.7, root / "out" / "wav", root / "out" / "wav16k", workers=2,
        progress=lambda stats: finished.append(stats.source_id),
    )  # fmt: skip
    return root, sources, results, finished


def test_preprocess_all_returns_results_in_input_order(two_worker_run) -> None:
    _, sources, results, _ = two_worker_run
    assert [r.source_id for r in results] == [s.id for s in sources]
    assert all(r.status == "used" for r in results)


def test_preprocess_all_reports_progress_once_per_file(two_worker_run) -> None:
    _, sources, _, finished = two_worker_run
    assert sorted(finished) == sorted(s.id for s in sources)


def test_preprocess_all_writes_only_the_segments_into_the_given_folders(two_worker_run) -> None:
    root, sources, results, _ = two_worker_run
    expected = {s.path for s in sources}
    for r in results:
        for seg in r.segments:
            expected |= {root / "out" / "wav" / f"{seg.id}.wav", root / "out" / "wav16k" / f"{seg.id}.wav"}
    assert files_under(root) == expected


def test_highpass_equals_rvcs_lfilter_across_blocks() -> None:
    from scipy import signal

    from rvc_core.preprocess.filters import highpass_coefficients

    x = np.random.default_rng(0).standard_normal(SR * 2)
    b, a = highpass_coefficients(SR)
    expected = signal.lfilter(b, a, x)
    hp = HighPass(SR)
    got = np.concatenate([hp(x[: SR // 3]), hp(x[SR // 3 :])])
    # The (b, a) form itself rounds at ~1e-5 with poles this close to 1: below 16-bit resolution.
    np.testing.assert_allclose(got, expected, rtol=0, atol=3e-5)


def test_statistics_count_negative_clipping_and_see_infinities_in_any_block() -> None:
    from rvc_core.preprocess.stats import StatsAccumulator

    acc = StatsAccumulator(SR, 1)
    quiet = np.full((1000, 1), 0.1, dtype=np.float32)
    loud = quiet.copy()
    loud[:30] = -1.0  # clipped on the negative side only
    broken = quiet.copy()
    broken[5] = np.inf
    for block in (quiet, loud, broken):
        acc.push(block)
    stats = acc.finish()
    assert stats.peak == pytest.approx(1.0)
    assert stats.clipped_fraction == pytest.approx(31 / 3000)  # the infinite sample counts as clipped
    assert stats.finite is False
