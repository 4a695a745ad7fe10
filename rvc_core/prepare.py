"""`prepare`: a voice zip becomes clean segments, pitch and content features in a work dir.

Each stage is skipped when its completion marker exists and writes its files atomically, so a
re-run after a crash continues where it stopped. The work dir is bound to one `PrepareConfig`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvc_core import __version__
from rvc_core.assets import AssetStore
from rvc_core.atomic import atomic_dir, write_json, write_npy
from rvc_core.config import PrepareConfig, config_hash
from rvc_core.errors import BadDataset, ConfigMismatch, NoAudio, RvcError, TooLittleAudio
from rvc_core.intake import ExtractedDataset, SourceFile, extract_dataset
from rvc_core.layout import STAGES, WorkDir
from rvc_core.preprocess import FileStats, Segment, preprocess_all
from rvc_core.preprocess.length import check_decoded_length, check_probed_length, decode_bound
from rvc_core.preprocess.records import REJECT_UNDECODABLE, reason_code
from rvc_core.progress import ProgressCallback, ProgressEvent, progress_bar
from rvc_core.report import MIN_USABLE_SECONDS, DatasetReport, build_report, report_from_json
from rvc_core.spec import SPEAKER_SLOTS

log = logging.getLogger(__name__)

# Audio per model call in the pitch and feature stages: bounded so memory stays flat.
BATCH_SECONDS = 60.0

# The clock of deadlines (`time.monotonic()` values); a module attribute so tests can fake it.
monotonic = time.monotonic
# Where a budgeted run keeps the rates it measured, so the next slice estimates with them.
RATES_FILE = "budget.json"
# Conservative seconds per unit before anything was measured (2 CPU cores, real networks). Units:
# preprocess per MB of source file; pitch/features per second of 16 kHz audio; load_* per load;
# train_start per train() start-up, train_step per step; ivf_iteration per 1e12 frame x list x dim
# multiply-adds; kmeans per 10k frames; export/preview/report/checkpoints per call; zip per MB.
DEFAULT_RATES: dict[str, float] = {
    "preprocess": 0.6,
    "load_pitch": 5.0,
    "pitch": 0.3,
    "load_features": 5.0,
    "features": 0.3,
    "train_start": 15.0,
    "train_step": 5.0,
    "stack_features": 0.02,
    "ivf_iteration": 30.0,
    "ivf_add": 30.0,
    "kmeans": 10.0,
    "export": 5.0,
    "preview": 10.0,
    "report": 5.0,
    "zip": 0.05,
    "checkpoints": 15.0,  # reads the training checkpoint (1.4 GB, full preset), writes G and D
}


class Paused(Exception):
    """Raised inside a budgeted run at a clean point: everything done so far is persisted and the
    next call resumes at `stage`. `done` counts the stage's finished units (segments, files, k-means
    iterations) so a caller can tell a slice that moved from one that did not."""

    def __init__(self, stage: str, done: int = 0, reason: str = "deadline") -> None:
        super().__init__(f"paused at {stage} ({reason})")
        self.stage = stage
        self.done = done
        self.reason = reason


@dataclass
class Budget:
    """A call's share of time: `deadline` (a `time.monotonic()` value, None: unbounded) and
    `should_stop` (checked before every unit). Before a unit that cannot stop midway, `check` raises
    `Paused` when the unit's estimated cost would pass the deadline, unless this call has done no
    work yet: a unit too long for any budget then gets a slice of its own, and every call moves.
    Rates measured here are kept in the work dir (`budget.json`) for the next call's estimates;
    `timings` holds this call's seconds per stage."""

    deadline: float | None = None
    should_stop: Callable[[], bool] | None = None
    rates_path: Path | None = None
    progressed: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rates_path is not None and self.rates_path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.rates = {k: float(v) for k, v in json.loads(self.rates_path.read_text()).items()}

    @property
    def bounded(self) -> bool:
        return self.deadline is not None

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - monotonic()

    def rate(self, key: str) -> float:
        return self.rates.get(key, DEFAULT_RATES[key])

    def estimate(self, key: str, units: float = 1.0) -> float:
        return self.rate(key) * units

    def fits(self, seconds: float) -> bool:
        """Whether a unit of `seconds` may start now (always, before this call did any work)."""
        return not self.progressed or seconds <= self.remaining()

    def grows(self, seconds: float) -> bool:
        """Whether a unit already granted may grow to `seconds` (a bigger batch or chunk)."""
        return seconds <= self.remaining()

    def check(self, stage: str, seconds: float = 0.0, done: int = 0) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Paused(stage, done, "should_stop")
        if not self.fits(seconds):
            raise Paused(stage, done)

    def record(self, key: str, seconds: float, units: float = 1.0, *, kept: bool = True) -> None:
        """Learns `key`'s rate (the mean of the newest and the previous one); `kept`: the unit's
        output is persisted, so this call has moved (loading a model is not progress)."""
        self.progressed = self.progressed or kept
        if units <= 0:
            return
        measured = seconds / units
        old = self.rates.get(key)
        self.rates[key] = measured if old is None else 0.5 * (old + measured)
        if self.rates_path is not None and self.rates_path.parent.is_dir():
            with contextlib.suppress(OSError):
                write_json(self.rates_path, self.rates)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = monotonic()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + monotonic() - started


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
    budget: Budget | None = None,
    max_audio_seconds: float | None = None,
) -> PreparedDataset:
    """Runs every preparation stage that is not done yet, up to and including `until` (benchmarks
    stop early). Raises `RvcError` on a rejected dataset, after writing `report.json`; raises
    `Paused` when `budget` runs out (preprocessing keeps its finished files, pitch and features
    their finished segments, so the next call continues). With `max_audio_seconds`, a longer
    dataset is refused as `too_much_audio` before any segment is written (`preprocess.length`)."""
    wd = WorkDir(Path(workdir))
    bind_workdir(wd, config)
    emit = progress or (lambda _e: None)
    budget = budget or Budget()
    try:
        with budget.timed("extract"):
            extracted = _stage_extract(Path(dataset_zip), wd, emit, budget, max_audio_seconds)
        with budget.timed("preprocess"):
            stats = _stage_preprocess(extracted, wd, config, workers, emit, budget, max_audio_seconds)
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
        with budget.timed("pitch"):
            _stage_pitch(segments, wd, config, assets, device, emit, budget)
    if STAGES.index(until) >= STAGES.index("features"):
        with budget.timed("features"):
            _stage_features(segments, wd, config, assets, device, emit, budget)
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
def _stage_extract(
    dataset_zip: Path, wd: WorkDir, emit: ProgressCallback, budget: Budget, max_seconds: float | None
) -> ExtractedDataset:
    if wd.is_done("extract"):
        return ExtractedDataset.from_json(json.loads(wd.extract_listing.read_text()), base=wd.extract_dir)
    budget.check("extract")  # the first stage: no estimate, a call that starts here always runs it
    started = monotonic()
    emit(ProgressEvent(stage="extract", message=f"reading {dataset_zip.name}"))
    with atomic_dir(wd.extract_dir) as tmp:
        extracted = extract_dataset(dataset_zip, tmp)
        # Inside the temporary folder: a dataset refused for its length leaves no extracted copy.
        probed = check_probed_length([f.path for f in extracted.files], max_seconds)
        # Paths relative to the extract folder, so the work dir can move between machines.
        listing = extracted.to_json(relative_to=tmp)
    write_json(wd.extract_listing, listing)
    marker = {"files": len(extracted.files), "ignored": len(extracted.ignored)}
    if max_seconds is not None:
        marker["probed_seconds"] = round(probed, 3)
    write_json(wd.stage_marker("extract"), marker)
    budget.record("extract", monotonic() - started, 0)
    return ExtractedDataset.from_json(listing, base=wd.extract_dir)


def _partial_preprocess(wd: WorkDir) -> Path:
    """Finished files of an interrupted preprocessing stage, by source id (gone once it is done)."""
    return wd.root / "segments.partial.json"


def _stage_preprocess(
    extracted: ExtractedDataset,
    wd: WorkDir,
    config: PrepareConfig,
    workers: int | None,
    emit: ProgressCallback,
    budget: Budget | None = None,
    max_seconds: float | None = None,
) -> list[FileStats]:
    """Preprocesses the files not done yet. Unbudgeted: all in one pool. Budgeted: in chunks sized
    to the time left (a file cannot stop midway), each chunk's results kept in
    `segments.partial.json`, so a paused stage resumes with the next file."""
    if wd.is_done("preprocess"):
        return load_segments(wd)
    budget = budget or Budget()
    partial_path = _partial_preprocess(wd)
    done: dict[str, FileStats] = {}
    if partial_path.exists():
        done = {k: FileStats.from_json(v) for k, v in json.loads(partial_path.read_text())["files"].items()}
    todo = [f for f in extracted.files if f.id not in done]
    emit(
        ProgressEvent(
            stage="preprocess",
            message=f"{len(todo)} of {len(extracted.files)} file(s) to do",
            total=len(extracted.files),
        )
    )
    pool = workers or _cpu_count()
    with progress_bar(total=len(todo), desc="preprocess", unit="file") as bar:
        while todo:
            chunk = _preprocess_chunk(todo, pool, budget)
            if not chunk:
                raise Paused("preprocess", len(done))
            started = monotonic()
            stats = preprocess_all(
                chunk,
                config.sample_rate,
                config.segment_seconds,
                wd.wav_dir,
                wd.wav16k_dir,
                workers=workers,
                progress=lambda _s: bar.update(1),
                max_seconds=decode_bound(max_seconds),
            )
            elapsed = monotonic() - started
            done.update({source.id: st for source, st in zip(chunk, stats, strict=True)})
            check_decoded_length((st.seconds for st in done.values()), max_seconds)
            todo = todo[len(chunk) :]
            if todo:
                write_json(partial_path, {"files": {k: v.to_json() for k, v in done.items()}})
            # Seconds per MB in one thread (its share of the chunk, the threads' start-up included).
            lane_mb = sum(f.size_bytes for f in chunk) / 2**20 / min(pool, len(chunk))
            budget.record("preprocess", elapsed, max(lane_mb, 1e-3))
    stats = [done[f.id] for f in extracted.files]
    write_json(wd.segments_listing, {"files": [s.to_json() for s in stats]})
    write_json(wd.stage_marker("preprocess"), {"segments": sum(len(s.segments) for s in stats)})
    partial_path.unlink(missing_ok=True)
    return stats


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _preprocess_chunk(todo: Sequence[SourceFile], pool: int, budget: Budget) -> list[SourceFile]:
    """The next files to preprocess: all of them without a deadline, else as many as the time left
    allows (files run `pool` at a time). Empty: pause."""
    if budget.should_stop is not None and budget.should_stop():
        return []
    if not budget.bounded:
        return list(todo)
    chunk: list[SourceFile] = []
    for source in todo:
        candidate = [*chunk, source]
        seconds = _chunk_seconds(candidate, pool, budget)
        if not (budget.grows(seconds) if chunk else budget.fits(seconds)):
            break
        chunk = candidate
    return chunk


def _chunk_seconds(chunk: Sequence[SourceFile], pool: int, budget: Budget) -> float:
    """Estimated wall time of preprocessing `chunk` in up to `pool` threads (longest first); threads
    start at no cost, and the measured rate already holds the per-file overheads."""
    lanes = [0.0] * max(1, min(pool, len(chunk)))
    for mb in sorted((f.size_bytes / 2**20 for f in chunk), reverse=True):
        lanes[lanes.index(min(lanes))] += budget.estimate("preprocess", mb)
    return max(lanes)


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


def _budgeted_batches(
    todo: Sequence[Segment], stage: str, budget: Budget, done: int
) -> Iterator[list[Segment]]:
    """`_batches` without a deadline; with one, each batch (of bounded audio, length-sorted) is cut
    to what the time left allows, and the stage pauses when not even one segment fits."""
    if not budget.bounded:
        for batch in _batches(todo, BATCH_SECONDS):
            budget.check(stage, 0.0, done)
            yield batch
            done += len(batch)
        return
    ordered = sorted(todo, key=lambda s: s.seconds)
    while ordered:
        batch: list[Segment] = []
        total = 0.0
        for seg in ordered:
            if batch and total + seg.seconds > BATCH_SECONDS:
                break
            seconds = budget.estimate(stage, total + seg.seconds)
            if not (budget.grows(seconds) if batch else budget.fits(seconds)):
                break
            batch.append(seg)
            total += seg.seconds
        if not batch:
            raise Paused(stage, done)
        budget.check(stage, 0.0, done)  # should_stop
        yield batch
        done += len(batch)
        ordered = ordered[len(batch) :]


def _run_per_segment(
    stage: str,
    segments: Sequence[Segment],
    wd: WorkDir,
    outputs: Callable[[Segment], list[Path]],
    compute: Callable[[list[np.ndarray]], list[list[np.ndarray]]],
    emit: ProgressCallback,
    budget: Budget | None = None,
) -> None:
    """Shared loop of the pitch and feature stages (the callers skip a finished stage before loading
    their model): only segments whose outputs are missing are computed (so an interrupted stage
    resumes), in length-sorted batches, each output atomic. With a budget, batches shrink to fit
    the time left and the loop raises `Paused` between them."""
    from rvc_core.audio_io import read_wav_float32

    budget = budget or Budget()
    todo = [s for s in segments if not all(p.exists() for p in outputs(s))]
    emit(
        ProgressEvent(
            stage=stage, message=f"{len(todo)} of {len(segments)} segment(s) to do", total=len(todo)
        )
    )
    with progress_bar(total=len(todo), desc=stage, unit="seg") as bar:
        for batch in _budgeted_batches(todo, stage, budget, len(segments) - len(todo)):
            started = monotonic()
            audio = [read_wav_float32(wd.wav16k_dir / f"{s.id}.wav")[0] for s in batch]
            for seg, arrays in zip(batch, compute(audio), strict=True):
                for path, array in zip(outputs(seg), arrays, strict=True):
                    write_npy(path, array)
            budget.record(stage, monotonic() - started, max(sum(len(a) for a in audio) / 16000, 1e-3))
            bar.update(len(batch))
            release_freed_memory()
    write_json(wd.stage_marker(stage), {"segments": len(segments)})


def _load_model(
    stage: str, load: Callable[[], object], budget: Budget, segments: Sequence[Segment]
) -> object:
    """The stage's model, loaded only when it and one segment's work fit the time left."""
    shortest = min((s.seconds for s in segments), default=0.0)
    budget.check(stage, budget.estimate(f"load_{stage}") + budget.estimate(stage, shortest))
    started = monotonic()
    model = load()
    budget.record(f"load_{stage}", monotonic() - started, kept=False)
    return model


def _stage_pitch(
    segments: Sequence[Segment],
    wd: WorkDir,
    config: PrepareConfig,
    assets: AssetStore,
    device: str,
    emit: ProgressCallback,
    budget: Budget | None = None,
) -> None:
    if wd.is_done("pitch"):
        return
    from rvc_core.pitch import coarse_pitch, load_pitch_extractor

    budget = budget or Budget()
    extractor: Any = _load_model(
        "pitch",
        lambda: load_pitch_extractor(config.f0_method, assets=assets, device=device),
        budget,
        segments,
    )

    def compute(audio: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[coarse_pitch(f0).astype(np.int64), f0.astype(np.float32)] for f0 in extractor.extract(audio)]

    _run_per_segment(
        "pitch",
        segments,
        wd,
        lambda s: [wd.coarse_dir / f"{s.id}.npy", wd.f0_dir / f"{s.id}.npy"],
        compute,
        emit,
        budget,
    )


def _stage_features(
    segments: Sequence[Segment],
    wd: WorkDir,
    config: PrepareConfig,
    assets: AssetStore,
    device: str,
    emit: ProgressCallback,
    budget: Budget | None = None,
) -> None:
    if wd.is_done("features"):
        return
    from rvc_core.features import load_content_encoder

    budget = budget or Budget()
    encoder: Any = _load_model(
        "features",
        lambda: load_content_encoder(config.version, assets=assets, device=device),
        budget,
        segments,
    )

    def compute(audio: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[f.astype(np.float32)] for f in encoder.extract(audio)]

    _run_per_segment(
        "features", segments, wd, lambda s: [wd.features_dir / f"{s.id}.npy"], compute, emit, budget
    )
