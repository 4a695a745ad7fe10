"""One training job end to end: zip → prepare → train → index → export → preview → report → zip.

Idempotent and resumable: every stage output and the training checkpoint live under `workdir`, so
calling `run_job` again with the same work dir continues where it stopped. With a `deadline` it
stops at a clean point and returns `status="paused"`; the service runs it once per work slice.
The job's types are in `rvc_core.jobspec`; the stages in `rvc_core.job_stages`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from rvc_core.assets import AssetStore
from rvc_core.job_stages import finish_job, prepare_stage, train_stage
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.progress import ProgressCallback

log = logging.getLogger(__name__)


def run_job(
    dataset_zip: Path,
    workdir: Path,
    outdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    *,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressCallback | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobProgress:
    emit = progress or (lambda _e: None)
    environ = environ or {}
    assets = AssetStore.from_option(env.assets, environ)
    prepared = prepare_stage(dataset_zip, Path(workdir), spec, env, assets, emit)
    trained = train_stage(Path(workdir), spec, env, deadline, should_stop, emit, environ)
    if trained.status != "finished":
        last = trained.history[-1].losses if trained.history else {}
        return JobProgress(
            status="paused",
            stage="train",
            epoch=trained.epoch,
            epochs=spec.epochs,
            step=trained.step,
            losses=dict(last),
            dataset_report=prepared.report.to_json(),
        )
    return finish_job(prepared, trained, Path(workdir), Path(outdir), spec, env, assets, emit)
