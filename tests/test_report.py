"""The dataset report: totals, warnings and the readable summary users see."""

from __future__ import annotations

from rvc_core.intake import ExtractedDataset, IgnoredEntry
from rvc_core.preprocess import DroppedChunk, FileStats, Segment
from rvc_core.report import build_report, summary_text


def _file(
    name: str,
    used: float,
    *,
    clipped: float = 0.0,
    status: str = "used",
    reason: str | None = None,
    speaker: int = 0,
    dropped: tuple[DroppedChunk, ...] = (),
) -> FileStats:
    n = round(used / 3.7)
    segments = tuple(Segment(f"{speaker}_{name}_{i:04d}", speaker, name, 3.4 * i, 3.7) for i in range(n))
    return FileStats(
        source_id=name,
        original_name=f"{name}.wav",
        speaker_id=speaker,
        seconds=used + 1.0,
        sample_rate=44100,
        channels=1,
        peak=0.8,
        clipped_fraction=clipped,
        silent_fraction=0.1,
        used_seconds=n * 3.7,
        status=status,
        reason=reason,
        segments=segments,
        dropped=dropped,
    )


def test_totals_count_files_segments_speakers_and_drops() -> None:
    drop = DroppedChunk("b", 10.0, 0.4, "too_short: 0.40 s")
    stats = [
        _file("a", 37.0),
        _file("b", 37.0, speaker=1, dropped=(drop,)),
        _file("c", 0.0, status="rejected", reason="undecodable_audio: bad header"),
    ]
    extracted = ExtractedDataset(
        files=(), ignored=(IgnoredEntry("notes.txt", "not an audio file (.txt)"),), speakers=(0, 1)
    )
    report = build_report(extracted, stats)
    t = report.totals
    assert (t.files, t.files_used, t.files_rejected, t.ignored_entries) == (3, 2, 1, 1)
    assert t.segments == 20 and t.usable_seconds == 74.0 and t.speakers == [0, 1]
    assert t.dropped_chunks == 1 and report.dropped[0]["reason"].startswith("too_short")
    assert len(report.segment_seconds) == 20


def test_short_dataset_clipping_and_a_dominant_file_are_warned_about() -> None:
    report = build_report(None, [_file("long", 44.4, clipped=0.05), _file("short", 3.7)])
    text = " | ".join(report.warnings)
    assert "only 48.1 s of usable audio" in text
    assert "long.wav: heavy clipping (5.0 % of samples)" in text
    assert "long.wav holds 92 % of the usable audio" in text


def test_a_balanced_hour_raises_no_warning() -> None:
    report = build_report(None, [_file(f"f{i}", 600.0) for i in range(6)])
    assert report.warnings == []


def test_summary_names_rejected_files_and_ignored_entries() -> None:
    stats = [_file("a", 37.0), _file("bad", 0.0, status="rejected", reason="undecodable_audio: not audio")]
    extracted = ExtractedDataset(
        files=(), ignored=(IgnoredEntry("__MACOSX/._a.wav", "macos resource fork"),), speakers=(0,)
    )
    text = summary_text(build_report(extracted, stats))
    assert "rejected bad.wav: undecodable_audio: not audio" in text
    assert "ignored  __MACOSX/._a.wav: macos resource fork" in text
    assert "37.0 s usable in 10 segment(s)" in text
