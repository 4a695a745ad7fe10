"""The dataset report: what was in the zip, what was used, what was not and why.

Written as `report.json` (even when the dataset is rejected) and summarised for humans on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rvc_core.intake import ExtractedDataset
from rvc_core.preprocess import FileStats

MIN_USABLE_SECONDS = 10.0  # below this a model cannot be trained: reject
SHORT_DATASET_SECONDS = 60.0  # below this, warn: quality suffers
HEAVY_CLIPPING_FRACTION = 0.01  # 1 % of samples at full scale
DOMINANT_FILE_SHARE = 0.8  # one file holding most of the usable audio


@dataclass
class DatasetTotals:
    files: int = 0
    files_used: int = 0
    files_rejected: int = 0
    ignored_entries: int = 0
    input_seconds: float = 0.0
    usable_seconds: float = 0.0
    segments: int = 0
    dropped_chunks: int = 0
    dropped_seconds: float = 0.0
    speakers: list[int] = field(default_factory=list)


@dataclass
class DatasetReport:
    status: str  # "ok" | "rejected"
    totals: DatasetTotals
    warnings: list[str]
    files: list[dict[str, Any]]
    ignored: list[dict[str, str]]
    dropped: list[dict[str, Any]]
    segment_seconds: list[float]  # every kept segment's duration, for the duration histogram
    error: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_report(extracted: ExtractedDataset | None, stats: Sequence[FileStats]) -> DatasetReport:
    """Totals and warnings from the intake listing and the per-file preprocessing results."""
    totals = DatasetTotals()
    files: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    segment_seconds: list[float] = []
    speakers: set[int] = set()
    for s in stats:
        files.append(
            {
                "name": s.original_name,
                "id": s.source_id,
                "speaker_id": s.speaker_id,
                "seconds": round(s.seconds, 3),
                "sample_rate": s.sample_rate,
                "channels": s.channels,
                "peak": round(s.peak, 4),
                "clipped_fraction": round(s.clipped_fraction, 5),
                "silent_fraction": round(s.silent_fraction, 4),
                "used_seconds": round(s.used_seconds, 3),
                "segments": len(s.segments),
                "status": s.status,
                "reason": s.reason,
            }
        )
        totals.files += 1
        totals.input_seconds += s.seconds
        if s.status == "used":
            totals.files_used += 1
            speakers.add(s.speaker_id)
        else:
            totals.files_rejected += 1
        totals.usable_seconds += s.used_seconds
        totals.segments += len(s.segments)
        segment_seconds.extend(round(seg.seconds, 3) for seg in s.segments)
        for d in s.dropped:
            dropped.append({"file": s.original_name, **asdict(d)})
            totals.dropped_chunks += 1
            totals.dropped_seconds += d.seconds
    ignored = [{"name": i.name, "reason": i.reason} for i in (extracted.ignored if extracted else ())]
    totals.ignored_entries = len(ignored)
    totals.speakers = sorted(speakers)
    totals.input_seconds = round(totals.input_seconds, 3)
    totals.usable_seconds = round(totals.usable_seconds, 3)
    totals.dropped_seconds = round(totals.dropped_seconds, 3)
    return DatasetReport(
        status="ok",
        totals=totals,
        warnings=_warnings(totals, stats),
        files=files,
        ignored=ignored,
        dropped=dropped,
        segment_seconds=segment_seconds,
    )


def _warnings(totals: DatasetTotals, stats: Sequence[FileStats]) -> list[str]:
    out: list[str] = []
    if MIN_USABLE_SECONDS <= totals.usable_seconds < SHORT_DATASET_SECONDS:
        out.append(
            f"only {totals.usable_seconds:.1f} s of usable audio: 10 minutes or more gives far better models"
        )
    for s in stats:
        if s.clipped_fraction >= HEAVY_CLIPPING_FRACTION:
            out.append(f"{s.original_name}: heavy clipping ({100 * s.clipped_fraction:.1f} % of samples)")
    used = [s for s in stats if s.used_seconds > 0]
    if len(used) >= 2 and totals.usable_seconds > 0:
        top = max(used, key=lambda s: s.used_seconds)
        share = top.used_seconds / totals.usable_seconds
        if share >= DOMINANT_FILE_SHARE:
            out.append(f"{top.original_name} holds {100 * share:.0f} % of the usable audio")
    if totals.files_rejected:
        out.append(f"{totals.files_rejected} file(s) could not be used (see files[].reason)")
    if totals.dropped_chunks:
        out.append(
            f"{totals.dropped_chunks} chunk(s), {totals.dropped_seconds:.1f} s, were dropped (see dropped[])"
        )
    return out


def report_from_json(data: dict[str, Any]) -> DatasetReport:
    return DatasetReport(**{**data, "totals": DatasetTotals(**data["totals"])})


def load_report(path: Path) -> DatasetReport:
    return report_from_json(json.loads(Path(path).read_text()))


def summary_text(report: DatasetReport) -> str:
    """A few readable lines for stdout."""
    t = report.totals
    lines = [
        f"dataset: {t.files} audio file(s), {t.files_used} used, {t.files_rejected} rejected, "
        f"{t.ignored_entries} other entr{'y' if t.ignored_entries == 1 else 'ies'} ignored",
        f"audio:   {t.input_seconds:.1f} s in, {t.usable_seconds:.1f} s usable in {t.segments} segment(s), "
        f"speaker(s) {', '.join(map(str, t.speakers)) or '-'}",
    ]
    for f in report.files:
        if f["status"] != "used":
            lines.append(f"  rejected {f['name']}: {f['reason']}")
    for i in report.ignored[:20]:
        lines.append(f"  ignored  {i['name']}: {i['reason']}")
    if len(report.ignored) > 20:
        lines.append(f"  … and {len(report.ignored) - 20} more ignored entries")
    lines.extend(f"warning: {w}" for w in report.warnings)
    if report.error:
        lines.append(f"rejected: {report.error['code']}: {report.error['message']}")
    return "\n".join(lines)
