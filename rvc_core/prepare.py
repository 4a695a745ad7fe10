"""`prepare`: a voice zip becomes clean segments, pitch and content features in a work dir.

Each stage is skipped when its completion marker exists and writes its files atomically, so a
re-run after a crash continues where it stopped. The work dir is bound to one `PrepareConfig`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_core import __version__
from rvc_core.assets import AssetStore
from rvc_core.atomic import atomic_dir, write_json, write_npy
from rvc_core.config import PrepareConfig, config_hash
from rvc_core.errors import BadDataset, ConfigMismatch, NoAudio, RvcError, TooLittleAudio
from rvc_core.intake import ExtractedDataset, extract_dataset
from rvc_core.layout import STAGES, WorkDir
from rvc_core.preprocess import FileStats, Segment, preprocess_all
from rvc_core.preprocess.records import REJECT_UNDECODABLE, reason_code
from rvc_core.progress import ProgressCallback, ProgressEvent, progress_bar
from rvc_core.report import MIN_USABLE_SECONDS, DatasetReport, build_report, report_from_json
from rvc_core.spec import SPEAKER_SLOTS

log = logging.getLogger(__name__)

# Audio per model call in the pitch and feature stages: bounded so memory stays flat.
BATCH_SECONDS = 60.0


@dataclass(frozen=True)
class PreparedDataset:
    workdir: WorkDir
    config: PrepareConfig
    segments: tuple[Segment, ...]
    report: DatasetReport


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "rvc_core": __version__}
    for name in ("torch", "torchaudio", "numpy", "scipy", "soundfile", "soxr", "librosa", "torchcrepe"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def bind_workdir(wd: WorkDir, config: PrepareConfig) -> None:
    """Records the config in the manifest, or refuses a work dir made with another one."""
    wanted = {"config": config.as_dict(), "config_hash": config_hash(config)}
    if wd.manifest.exists():
        have = json.loads(wd.manifest.read_text())
        if have.get("config_hash") != wanted["config_hash"]:
            diffs = [
                f"{k}: {have.get('config', {}).get(k)!r} -> {v!r}"
                for k, v in wanted["config"].items()
                if have.get("config", {}).get(k) != v
            ]
            raise ConfigMismatch(
                f"work dir {wd.root} was prepared with another configuration ({'; '.join(diffs)}); "
                "use a new --out folder or the original options",
                stage="prepare",
            )
        return
    wd.root.mkdir(parents=True, exist_ok=True)
    write_json(wd.manifest, {**wanted, "versions": library_versions()})


def run_prepare(
    dataset_zip: Path,
    workdir: Path,
    config: PrepareConfig,
    *,
    assets: AssetStore,
    device: str = "cpu",
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    until: str = "features",
) -> PreparedDataset:
    """Runs every preparation stage that is not done yet, up to and including `until` (benchmarks
    stop early). Raises `RvcError` on a rejected dataset, after writing `report.json`."""
    wd = WorkDir(Path(workdir))
    bind_workdir(wd, config)
    emit = progress or (lambda _e: None)
    try:
        extracted = _stage_extract(Path(dataset_zip), wd, emit)
        stats = _stage_preprocess(extracted, wd, config, workers, emit)
        report = build_report(extracted, stats)
        report.config = config.as_dict()
        write_json(wd.report, report.to_json())
        _check_usable(report, wd)
    except RvcError as err:
        err.stage = err.stage or "prepare"
        write_rejection(wd.root, err, config)
        raise
    segments = tuple(seg for s in stats for seg in s.segments)
    if STAGES.index(until) >= STAGES.index("pitch"):
        _stage_pitch(segments, wd, config, assets, device, emit)
    if STAGES.index(until) >= STAGES.index("features"):
        _stage_features(segments, wd, config, assets, device, emit)
    return PreparedDataset(workdir=wd, config=config, segments=segments, report=report)


def write_rejection(workdir: Path, error: RvcError, config: PrepareConfig | None) -> DatasetReport:
    """Makes sure a report exists and names the error, whichever stage raised it."""
    wd = WorkDir(Path(workdir))
    if wd.report.exists():
        data = json.loads(wd.report.read_text())
    else:
        data = build_report(None, []).to_json()
        data["config"] = config.as_dict() if config else None
    data["status"] = "rejected"
    data["error"] = error.as_dict()
    write_json(wd.report, data)
    return report_from_json(data)


def load_segments(wd: WorkDir) -> list[FileStats]:
    return [FileStats.from_json(d) for d in json.loads(wd.segments_listing.read_text())["files"]]


# --- stages ----------------------------------------------------------------------------------------
def _stage_extract(dataset_zip: Path, wd: WorkDir, emit: ProgressCallback) -> ExtractedDataset:
    if wd.is_done("extract"):
        return ExtractedDataset.from_json(json.loads(wd.extract_listing.read_text()), base=wd.extract_dir)
    emit(ProgressEvent(stage="extract", message=f"reading {dataset_zip.name}"))
    with atomic_dir(wd.extract_dir) as tmp:
        extracted = extract_dataset(dataset_zip, tmp)
        # Paths relative to the extract folder, so the work dir can move between machines.
        listing = extracted.to_json(relative_to=tmp)
    write_json(wd.extract_listing, listing)
    write_json(wd.stage_marker("extract"), {"files": len(extracted.files), "ignored": len(extracted.ignored)})
    return ExtractedDataset.from_json(listing, base=wd.extract_dir)


def _stage_preprocess(
    extracted: ExtractedDataset,
    wd: WorkDir,
    config: PrepareConfig,
    workers: int | None,
    emit: ProgressCallback,
) -> list[FileStats]:
    if wd.is_done("preprocess"):
        return load_segments(wd)
    emit(
        ProgressEvent(
            stage="preprocess", message=f"{len(extracted.files)} file(s)", total=len(extracted.files)
        )
    )
    with progress_bar(total=len(extracted.files), desc="preprocess", unit="file") as bar:
        stats = preprocess_all(
            extracted.files,
            config.sample_rate,
            config.segment_seconds,
            wd.wav_dir,
            wd.wav16k_dir,
            workers=workers,
            progress=lambda _s: bar.update(1),
        )
    write_json(wd.segments_listing, {"files": [s.to_json() for s in stats]})
    write_json(wd.stage_marker("preprocess"), {"segments": sum(len(s.segments) for s in stats)})
    return stats


def _check_usable(report: DatasetReport, wd: WorkDir) -> None:
    t = report.totals
    too_high = [s for s in t.speakers if s >= SPEAKER_SLOTS]
    if too_high:
        raise BadDataset(
            f"speaker folder number {too_high[0]} is too large: "
            f"RVC models hold speakers 0..{SPEAKER_SLOTS - 1}",
            stage="prepare",
        )
    undecodable = [f for f in report.files if reason_code(f.get("reason") or "") == REJECT_UNDECODABLE]
    if t.files and len(undecodable) == t.files:
        raise NoAudio(
            f"none of the {t.files} audio file(s) could be decoded "
            f"(first: {report.files[0]['name']}: {report.files[0]['reason']})",
            stage="prepare",
        )
    if t.usable_seconds < MIN_USABLE_SECONDS:
        raise TooLittleAudio(
            f"only {t.usable_seconds:.1f} s of usable audio after removing silence and bad chunks; "
            f"at least {MIN_USABLE_SECONDS:.0f} s are needed (10 minutes or more recommended)",
            stage="prepare",
        )


def release_freed_memory() -> None:
    """Hands freed heap pages back to the OS. Batches of varying shapes otherwise fragment glibc's
    heap, and peak memory grows with dataset length (measured: +260 MB from 10 to 60 minutes)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _batches(segments: Sequence[Segment], max_seconds: float) -> Iterator[list[Segment]]:
    """Groups segments of similar length (sorted) into batches of bounded total audio."""
    ordered = sorted(segments, key=lambda s: s.seconds)
    batch: list[Segment] = []
    total = 0.0
    for seg in ordered:
        if batch and total + seg.seconds > max_seconds:
            yield batch
            batch, total = [], 0.0
        batch.append(seg)
        total += seg.seconds
    if batch:
        yield batch


def _run_per_segment(
    stage: str,
    segments: Sequence[Segment],
    wd: WorkDir,
    outputs: Callable[[Segment], list[Path]],
    compute: Callable[[list[np.ndarray]], list[list[np.ndarray]]],
    emit: ProgressCallback,
) -> None:
    """Shared loop of the pitch and feature stages (the callers skip a finished stage before loading
    their model): only segments whose outputs are missing are computed (so an interrupted stage
    resumes), in length-sorted batches, each output atomic."""
    from rvc_core.audio_io import read_wav_float32

    todo = [s for s in segments if not all(p.exists() for p in outputs(s))]
    emit(
        ProgressEvent(
            stage=stage, message=f"{len(todo)} of {len(segments)} segment(s) to do", total=len(todo)
        )
    )
    with progress_bar(total=len(todo), desc=stage, unit="seg") as bar:
        for batch in _batches(todo, BATCH_SECONDS):
            audio = [read_wav_float32(wd.wav16k_dir / f"{s.id}.wav")[0] for s in batch]
            for seg, arrays in zip(batch, compute(audio), strict=True):
                for path, array in zip(outputs(seg), arrays, strict=True):
                    write_npy(path, array)
            bar.update(len(batch))
            release_freed_memory()
    write_json(wd.stage_marker(stage), {"segments": len(segments)})


def _stage_pitch(
    segments: Sequence[Segment],
    wd: WorkDir,
    config: PrepareConfig,
    assets: AssetStore,
    device: str,
    emit: ProgressCallback,
) -> None:
    if wd.is_done("pitch"):
        return
    from rvc_core.pitch import coarse_pitch, load_pitch_extractor

    extractor = load_pitch_extractor(config.f0_method, assets=assets, device=device)

    def compute(audio: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[coarse_pitch(f0).astype(np.int64), f0.astype(np.float32)] for f0 in extractor.extract(audio)]

    _run_per_segment(
        "pitch",
        segments,
        wd,
        lambda s: [wd.coarse_dir / f"{s.id}.npy", wd.f0_dir / f"{s.id}.npy"],
        compute,
        emit,
    )


def _stage_features(
    segments: Sequence[Segment],
    wd: WorkDir,
    config: PrepareConfig,
    assets: AssetStore,
    device: str,
    emit: ProgressCallback,
) -> None:
    if wd.is_done("features"):
        return
    from rvc_core.features import load_content_encoder

    encoder = load_content_encoder(config.version, assets=assets, device=device)

    def compute(audio: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[f.astype(np.float32)] for f in encoder.extract(audio)]

    _run_per_segment("features", segments, wd, lambda s: [wd.features_dir / f"{s.id}.npy"], compute, emit)
