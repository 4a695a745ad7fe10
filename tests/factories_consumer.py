"""Factories for the consumer's tests: a fake trainer with `run_job`'s contract, and a local stack.

The fake trainer keeps its state under `workdir` exactly as the real one promises (idempotent,
resumable: a checkpoint file holds the epoch reached), pauses after `epochs_per_call` epochs (a
deterministic stand-in for the slice deadline) or when `should_stop()` says so, and writes small
artifacts when done. It checks the dataset like the pipeline would: not a zip → `not_a_zip`, a zip
without audio → `no_audio`.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_core.atomic import write_json
from rvc_core.errors import NoAudio, NotAZip
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.progress import ProgressEvent


@dataclass
class Call:
    job_dir: str  # the work dir's parent: one per job
    resumed_epoch: int  # the checkpoint's epoch when the call started
    env: JobEnvironment | None = None  # what the worker passed (assets, device, compile, ...)


@dataclass
class FakeTrainer:
    epochs_per_call: int = 2
    seconds_per_epoch: float = 0.0
    failures: list[BaseException] = field(default_factory=list)  # raised by the next calls, in order
    on_epoch: Callable[[int], None] | None = None  # called after each epoch (e.g. to send SIGTERM)
    calls: list[Call] = field(default_factory=list)
    running: int = 0  # calls in progress now
    max_running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self,
        dataset_zip: Path,
        workdir: Path,
        outdir: Path,
        spec: JobSpec,
        env: JobEnvironment,
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> JobProgress:
        emit = progress or (lambda _e: None)
        checkpoint = Path(workdir) / "train" / "checkpoint.json"
        epoch = json.loads(checkpoint.read_text())["epoch"] if checkpoint.exists() else 0
        with self._lock:
            self.calls.append(Call(str(Path(workdir).parent), epoch, env))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.failures:
                raise self.failures.pop(0)
            report = self._prepare(Path(dataset_zip), Path(workdir), emit)
            done_now = 0
            while epoch < spec.epochs and done_now < self.epochs_per_call:
                if (should_stop and should_stop()) or (deadline is not None and time.monotonic() >= deadline):
                    break
                time.sleep(self.seconds_per_epoch)
                epoch += 1
                done_now += 1
                write_json(checkpoint, {"epoch": epoch})
                emit(
                    ProgressEvent(
                        stage="train",
                        epoch=epoch,
                        epochs=spec.epochs,
                        step=epoch * 3,
                        losses={"mel": 10.0 / epoch},
                        eta_seconds=float(spec.epochs - epoch),
                    )
                )
                if self.on_epoch:
                    self.on_epoch(epoch)
            if epoch < spec.epochs:
                return JobProgress(
                    status="paused",
                    stage="train",
                    epoch=epoch,
                    epochs=spec.epochs,
                    step=epoch * 3,
                    losses={"mel": 10.0 / max(epoch, 1)},
                    dataset_report=report,
                )
            return self._finish(Path(outdir), spec, epoch, report, emit)
        finally:
            with self._lock:
                self.running -= 1

    def _prepare(
        self, dataset_zip: Path, workdir: Path, emit: Callable[[ProgressEvent], None]
    ) -> dict[str, Any]:
        marker = workdir / "stages" / "prepare.json"
        if marker.exists():
            return json.loads(marker.read_text())
        emit(ProgressEvent(stage="extract", message="reading the zip"))
        if not zipfile.is_zipfile(dataset_zip):
            write_json(workdir / "report.json", {"accepted": False, "reason": "not a zip"})
            raise NotAZip("the upload is not a zip archive", stage="extract")
        with zipfile.ZipFile(dataset_zip) as zf:
            audio = [n for n in zf.namelist() if n.lower().endswith((".wav", ".flac"))]
        if not audio:
            write_json(workdir / "report.json", {"accepted": False, "files_used": 0})
            raise NoAudio("no audio file in the archive", stage="extract")
        report = {"files_used": len(audio), "files_rejected": []}
        (workdir / "segments").mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(audio):
            (workdir / "segments" / f"{i:03d}.txt").write_text(name)
        write_json(marker, report)
        emit(ProgressEvent(stage="features", message="features ready"))
        return report

    def _finish(
        self,
        outdir: Path,
        spec: JobSpec,
        epoch: int,
        report: dict[str, Any],
        emit: Callable[[ProgressEvent], None],
    ) -> JobProgress:
        emit(ProgressEvent(stage="export", message="writing the model"))
        outdir.mkdir(parents=True, exist_ok=True)
        pth = outdir / f"{spec.model_name}.pth"
        pth.write_text(json.dumps({"model": spec.model_name, "epochs": epoch}))
        index = outdir / f"added_IVF1_Flat_nprobe_1_{spec.model_name}_{spec.version}.index"
        index.write_bytes(b"index")
        zipped = outdir / f"{spec.model_name}.zip"
        with zipfile.ZipFile(zipped, "w") as zf:
            zf.write(pth, pth.name)
            zf.write(index, index.name)
        return JobProgress(
            status="finished",
            stage="done",
            epoch=epoch,
            epochs=spec.epochs,
            step=epoch * 3,
            artifacts={"pth": pth, "index": index, "zip": zipped},
            metrics={"epochs": epoch, "best_epoch": epoch},
            dataset_report=report,
        )
