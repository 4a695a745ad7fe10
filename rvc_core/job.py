"""One training job end to end: zip → prepare → train → index → export → preview → report → zip →
G/D checkpoint pair.

Idempotent and resumable: every stage output and the training checkpoint live under `workdir`, so
calling `run_job` again with the same work dir continues where it stopped. With a `deadline` it
stops at a clean point and returns `status="paused"`; the service runs it once per work slice.
Every stage respects the deadline, not only training: a unit of work that cannot stop midway (a
file's preprocessing, a batch of pitch or features, a k-means iteration, the export) is estimated
from rates measured earlier (kept in the work dir's `budget.json`) and, when it would pass the
deadline, left to the next call, which starts with it. A call always does at least one unit, so
every call moves. The result's `timings` holds this call's seconds per stage.
The job's types are in `rvc_core.jobspec`; the stages in `rvc_core.job_stages`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from rvc_core.assets import AssetStore
from rvc_core.job_stages import finish_job, prepare_stage, train_stage
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.prepare import RATES_FILE, Budget, Paused, monotonic
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
    workdir = Path(workdir)
    budget = Budget(deadline=deadline, should_stop=should_stop, rates_path=workdir / RATES_FILE)
    started = monotonic()
    prepared = trained = None
    try:
        assets = AssetStore.from_option(env.assets, environ)
        prepared = prepare_stage(dataset_zip, workdir, spec, env, assets, emit, budget)
        trained = train_stage(workdir, spec, env, budget, emit, environ)
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
                timings=_timings(budget, started),
            )
        result = finish_job(prepared, trained, workdir, Path(outdir), spec, env, assets, emit, budget)
    except Paused as pause:
        log.info("paused at %s after %.1f s (%s)", pause.stage, monotonic() - started, pause.reason)
        return JobProgress(
            status="paused",
            stage=pause.stage,
            # After training, the later stages' pauses still report the trained epoch: the job's
            # progress must not fall back to epoch 0 while it indexes and exports.
            epoch=trained.epoch if trained is not None else 0,
            epochs=spec.epochs,
            # Outside training `step` counts the stage's finished units (files, segments,
            # k-means iterations), so a slice that moved is told from one that did not.
            step=pause.done,
            dataset_report=prepared.report.to_json() if prepared is not None else None,
            timings=_timings(budget, started),
        )
    result.timings = _timings(budget, started)
    return result


def _timings(budget: Budget, started: float) -> dict[str, float]:
    out = {k: round(v, 3) for k, v in budget.timings.items()}
    out["total"] = round(monotonic() - started, 3)
    return out
