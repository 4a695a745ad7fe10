"""One work slice of one job: what `POST /work` does with a token `{job_id, seq}`.

A slice takes the job's lease (compare-and-swap on the record), restores the work dir from the
state bucket, runs the pipeline until the slice budget (SLICE_SECONDS) is spent, uploads what
changed, queues the next token's task and only then advances the record and answers 2xx. Every
step is safe to lose: the queue retries an unanswered task and the next slice resumes from the
last uploaded state.

Token rules: a token behind the record's `seq` is stale (done, dropped); one ahead of it was
queued just before its predecessor advanced the record (retry later); a job leased by a live
owner is retried later; a lease that expired means its slice died, which counts as a failure. A
job failing MAX_CONSECUTIVE_FAILURES slices in a row is marked failed. A newer upload of the same
model name supersedes an unfinished job. A cancel (`POST /jobs/<id>:cancel`) flags a leased job:
the lease keeper sees the flag within seconds, training stops at its next check and the slice
finalises the job `cancelled`. Each job publishes exactly one final result. A "retry later" answer
costs the job nothing: the queue retries without limit, so waiting never fails.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from consumer.errors import SLICE_FAILED, NotFound, PreconditionFailed, Superseded
from consumer.jobs.records import JobRecord, JobRecords
from consumer.jobs.results import Results, summarised
from consumer.jobs.waiting import WaitingLine
from consumer.logs import log
from consumer.work.answer import Outcome, SliceAnswer
from consumer.work.artifacts import publish_artifacts, with_report
from consumer.work.budget import SliceBudget
from consumer.work.dataset import download_base_pair, download_dataset, drop_extracted_upload, dropping_upload
from consumer.work.finalise import Finaliser, FinalNotPublished, cancelled_error
from consumer.work.lease import DECISION_DETAIL, LeaseKeeper, take_lease
from consumer.work.mirror import WorkdirMirror
from consumer.work.progress import ProgressReporter, progress_numbers, with_history
from consumer.work.record_errors import record_error, record_error_of
from consumer.work.scratch import ScratchSpace, default_budget
from consumer.work.timings import Stopwatch
from consumer.work.tokens import WorkQueue, WorkToken
from rvc_core.errors import RvcError
from rvc_core.layout import WorkDir

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.settings import Settings
    from rvc_core.progress import ProgressEvent

logger = logging.getLogger(__name__)
HISTORY_LENGTH = 50  # slices kept in a record's history
NO_PROGRESS = "no_progress"  # error code: slices advance but no stage finishes and no step is trained


__all__ = ["FinalNotPublished", "SliceAnswer", "SliceDeps", "SliceRunner", "Trainer"]


# --- the trainer and the slice --------------------------------------------------------------------
class Trainer(Protocol):
    """`rvc_core.job.run_job`'s signature."""

    def __call__(
        self,
        dataset_zip: Path,
        workdir: Path,
        outdir: Path,
        spec: Any,
        env: Any,
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Any: ...


def default_trainer() -> Trainer:
    from rvc_core.job import run_job

    return run_job


# The parts of a slice's wall time in `SliceAnswer.timings`. Only `run_job` is training; the rest
# (and whatever `total` holds beyond the parts) is the overhead of running in slices.
SLICE_PARTS: dict[str, str] = {
    "lease": "read the job record and take its lease (compare-and-swap)",
    "newer_upload": "check for a newer upload of the same model name",
    "dataset": "download the upload (first slice on an instance only)",
    "restore": "bring the work dir to the state bucket's version",
    "run_job": "rvc_core.job.run_job, less the progress publishing it called back into",
    "progress": "publish progress results (called from inside run_job)",
    "sync": "upload new and changed work-dir files",
    "queue_next": "create the next work token's task",
    "advance": "advance the record (compare-and-swap)",
    "artifacts": "upload the model files (last slice)",
    "finalise": "final status, the final result, removing the job's work files (last slice)",
    "failure": "count a failed slice on the record",
}


@dataclass
class SliceDeps:
    settings: Settings
    records: JobRecords
    results: Results
    work: WorkQueue
    line: WaitingLine
    store_for: Callable[[str], ObjectStore]  # the store serving a URI
    owner: str  # this instance and process
    trainer: Trainer
    stop: threading.Event = field(default_factory=threading.Event)  # set on SIGTERM
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class _Slice:
    """One slice in progress: its token, the record as leased, and where it started."""

    token: WorkToken
    record: JobRecord
    started_at: float  # seconds since the epoch
    epoch_from: int  # the epoch of the last persisted checkpoint
    deadline: float  # time.monotonic() value
    watch: Stopwatch  # where the slice's time goes
    history: list[dict[str, Any]] = field(default_factory=list)  # progress.history: per-epoch losses

    @property
    def job_id(self) -> str:
        return self.token.job_id

    def answer(self, outcome: Outcome, detail: str = "") -> SliceAnswer:
        return SliceAnswer(outcome, detail, self.token.job_id, self.token.seq)

    def note(self, r: JobRecord, outcome: str, ended_at: float, epoch_to: int | None = None) -> None:
        """Appends this slice to the record's history (kept short): who ran it, when, how far."""
        entry = {
            "seq": self.token.seq, "owner": r.lease.owner if r.lease else None, "outcome": outcome,
            "started_at": self.started_at, "ended_at": ended_at, "epoch_from": self.epoch_from,
            "epoch_to": self.epoch_from if epoch_to is None else epoch_to,
        }  # fmt: skip
        r.history = [*r.history, entry][-HISTORY_LENGTH:]


class SliceRunner:
    """Runs slices, one at a time per process (a second concurrent token is answered "busy")."""

    def __init__(self, deps: SliceDeps) -> None:
        self.deps = deps
        self._busy = threading.Lock()
        budget = deps.settings.scratch_budget_bytes or default_budget()
        self.scratch = ScratchSpace(Path(deps.settings.work_root), budget)
        settings = deps.settings
        self.budget = SliceBudget(
            settings.slice_seconds, settings.dispatch_deadline_seconds, deps.monotonic()
        )

    def run(self, token: WorkToken) -> SliceAnswer:
        received = self.deps.monotonic()
        if self.deps.stop.is_set():
            return SliceAnswer("shutting_down", "the instance is stopping", token.job_id, token.seq)
        if not self._busy.acquire(blocking=False):
            return SliceAnswer("busy", "this instance is running another slice", token.job_id, token.seq)
        watch = Stopwatch()
        try:
            work_seconds = self.budget.work_seconds(received)
            answer = self._run(token, deadline=received + work_seconds, watch=watch)
            self.budget.record(watch)
        finally:
            self._busy.release()
        total = round(self.deps.monotonic() - received, 6)
        answer = replace(answer, timings={**watch.as_json(), "total": total})
        log(logger, logging.INFO, f"slice {answer.outcome}", owner=self.deps.owner, **answer.as_json())
        return answer

    # The slice, step by step. Each helper returns the answer when the slice ends there.
    def _run(self, token: WorkToken, *, deadline: float, watch: Stopwatch) -> SliceAnswer:
        d = self.deps
        try:
            with watch.part("lease"):  # one read and one compare-and-swap write of the record
                decision, record = take_lease(d.records, token, d.owner, d.settings.lease_seconds, d.clock)
        except NotFound:
            return SliceAnswer("unknown_job", "no record for this job", token.job_id, token.seq)
        if decision == "final":
            return self._redelivered_final(token, record)
        if decision not in ("started", "taken"):
            return SliceAnswer(decision, DECISION_DETAIL[decision], token.job_id, token.seq)
        if decision == "started" and not record.cancel_requested_at:  # a cancelled job never "starts"
            self._announce_start(record)
        s = _Slice(token, record, d.clock(), int(record.progress.get("epoch") or 0), deadline, watch)
        s.history = list(record.progress.get("history") or [])
        log(logger, logging.INFO, "slice started", job_id=s.job_id, seq=token.seq, owner=d.owner)
        try:
            return self._leased(s)
        except FinalNotPublished as err:
            return s.answer("retry", str(err))

    def _redelivered_final(self, token: WorkToken, record: JobRecord) -> SliceAnswer:
        """A token of a final job: its final result may have been cut by a crash or a failed publish:
        publish it unless another delivery is; its work files go in any case."""
        try:
            published = self._publish_final(record, claimed=False)
        except FinalNotPublished as err:
            return SliceAnswer("retry", str(err), token.job_id, token.seq)
        finally:
            self._forget_work(record.job_id)
        if published is None:
            return SliceAnswer(
                "busy", "another delivery is publishing the final result", token.job_id, token.seq
            )
        return SliceAnswer("stale", f"job already {record.status}", token.job_id, token.seq)

    def _leased(self, s: _Slice) -> SliceAnswer:
        """The slice once it holds the lease: any error from here on releases the lease (counted)."""
        d, record = self.deps, s.record
        try:
            if record.cancel_requested_at:  # cancelled while a slice held it, which then died
                return self._cancel(s)
            if record.consecutive_failures >= d.settings.max_consecutive_failures:
                return self._fail(
                    s, record.error or record_error(record.stage, SLICE_FAILED, "too many failures", True)
                )
            with s.watch.part("newer_upload"):
                newer = self._newer_upload(record)
            if newer is not None:
                return self._supersede(
                    s, f"a newer upload of {record.model_name} (job {newer}) replaced it", newer
                )
            taken_at = record.lease.expires_at - d.settings.lease_seconds if record.lease else None
            keeper = LeaseKeeper(
                d.records, s.job_id, d.owner, d.settings.lease_seconds, d.clock, renewed_at=taken_at
            )
            with keeper:
                return self._train(s, keeper)
        except FinalNotPublished:
            raise
        except Superseded as sup:
            return self._supersede(s, str(sup), sup.newer_job)
        except RvcError as err:
            if err.retryable or isinstance(err, PreconditionFailed):  # a lost CAS race: try again later
                return self._count_failure(s, record_error_of(err, record.stage))
            return self._fail(s, record_error_of(err, record.stage), dataset_report=self._report(s.job_id))
        except Exception as err:  # a bug or the machine (out of memory, a dead GPU): retried, counted
            logger.exception("slice crashed", extra={"fields": {"job_id": s.job_id, "seq": s.token.seq}})
            return self._count_failure(s, record_error(record.stage, SLICE_FAILED, repr(err), True))

    def _train(self, s: _Slice, keeper: LeaseKeeper) -> SliceAnswer:
        d = self.deps
        self.scratch.use(s.job_id)  # evicts other jobs' scratch folders past the budget
        local = self._local_dir(s.job_id)
        workdir, outdir = local / "work", local / "out"
        state_store = d.store_for(d.records.state_url)
        mirror = WorkdirMirror(state_store, f"{d.records.job_prefix(s.job_id)}/work", workdir)
        with s.watch.part("restore"):
            mirror.restore()
        with s.watch.part("dataset"):
            dataset = download_dataset(d.store_for, s.record, local / "dataset.zip", workdir)
            base_g, base_d = download_base_pair(d.store_for, s.record, local / "base", workdir)
        shutil.rmtree(outdir, ignore_errors=True)
        reporter = ProgressReporter(
            d.results, s.record, keeper, d.settings.progress_every_epochs, s.watch, history=s.history
        )
        from rvc_core.jobspec import COMPILE_CHOICES, JobEnvironment

        environment = JobEnvironment(
            assets=d.settings.rvc_assets,
            pretrained=d.settings.rvc_pretrained,
            device=d.settings.resolved_device(),
            base_g=base_g,
            base_d=base_d,
            compile=COMPILE_CHOICES[d.settings.train_compile],
            max_audio_seconds=d.settings.max_audio_minutes * 60,
        )
        milestones, position = _milestones(workdir), _position_of(s.record)  # the reporter updates s.record
        started, progress_before = s.watch.clock(), s.watch.seconds("progress")
        try:
            progress = d.trainer(
                dataset, workdir, outdir, _job_spec(s.record), environment, deadline=s.deadline,
                should_stop=lambda: d.stop.is_set() or keeper.cancelled.is_set() or not keeper.owns(),
                progress=dropping_upload(reporter, s.record, dataset, workdir),
            )  # fmt: skip
        finally:
            drop_extracted_upload(s.record, dataset, workdir)
        publishing = s.watch.seconds("progress") - progress_before
        s.watch.add("run_job", s.watch.clock() - started - publishing)
        s.history = reporter.history
        if (stopped := self._not_owner(s, keeper)) is not None:
            return stopped
        if keeper.cancelled.is_set() and progress.status != "finished":  # a finished job succeeds
            return self._cancel(s, progress)
        if progress.status == "finished":
            with s.watch.part("artifacts"):
                files = with_report(dict(progress.artifacts), progress.dataset_report, outdir)
                artifacts = publish_artifacts(d.store_for, d.settings.models_url, s.record, files)
            if (stopped := self._not_owner(s, keeper)) is not None:
                return stopped
            return self._succeed(s, progress, artifacts)
        with s.watch.part("sync"):
            mirror.sync()
        if (stopped := self._not_owner(s, keeper)) is not None:
            return stopped
        moved = _milestones(workdir) != milestones or _position(progress) != position
        return self._advance(s, progress, moved=moved or d.stop.is_set())

    def _not_owner(self, s: _Slice, keeper: LeaseKeeper) -> SliceAnswer | None:
        """Why this slice must write nothing more, or None while it surely holds the job."""
        if keeper.lost.is_set():
            return s.answer("lease_lost", "another owner took the job over")
        if not keeper.owns():
            age = self.deps.clock() - keeper.renewed_at
            # Not known to be lost: answer "retry", so the queue delivers the token again; the
            # retry takes the expired lease (a counted failure) or finds the job moved on.
            return s.answer(
                "retry", f"lease last renewed {age:.0f} s ago (lease {keeper.ttl:g} s): stopped unwritten"
            )
        return None

    def _newer_upload(self, record: JobRecord) -> str | None:
        records = self.deps.records
        newest = records.newest(record.model_name)
        if newest is None or newest["job_id"] == record.job_id:
            return None
        mine = {
            "job_id": record.job_id,
            "generation": record.source.generation,
            "created_at": record.created_at,
        }
        if records.is_newer(newest, mine):  # request order for /train jobs of one generation
            return str(newest["job_id"])
        return None

    def _announce_start(self, record: JobRecord) -> None:
        """The job's first slice: it leaves the waiting line, and `running` goes out (once per id)."""
        try:
            self.deps.line.started(record)
            self.deps.results.publish("progress", record, extra_id="running")
        except Exception as err:  # informative only: the slice goes on
            log(logger, logging.WARNING, "start announcement failed", job_id=record.job_id, error=repr(err))

    def _advance(self, s: _Slice, progress: Any, *, moved: bool = True) -> SliceAnswer:
        """Queues the next token and advances the record. A slice that `moved` nothing (no stage
        finished, no training step) counts as a failure: a job that never moves ends `no_progress`."""
        d = self.deps
        stuck = None if moved else record_error(
            progress.stage, NO_PROGRESS,
            f"slice {s.token.seq} ended at {progress.stage} epoch {progress.epoch} step {progress.step}, "
            "where the previous one did: the work dir is not being kept between slices",
            True,
        )  # fmt: skip
        if stuck is not None and s.record.consecutive_failures + 1 >= d.settings.max_consecutive_failures:
            return self._fail(s, {**stuck, "retryable": False})
        # The next task is queued first: if this process dies now, this task is retried and the slice
        # re-runs (its re-queue of the next task is refused by name); the other order could lose the
        # job (record advanced, no task in the queue).
        with s.watch.part("queue_next"):
            d.work.enqueue(WorkToken(s.job_id, s.token.seq + 1))
        advanced, cancelled = [False], [False]

        def advance(r: JobRecord) -> bool:
            if r.lease is None or r.lease.owner != d.owner or r.seq != s.token.seq:
                return False
            cancelled[0] = bool(r.cancel_requested_at)
            if cancelled[0]:  # asked since the keeper last looked: end it now, not one turn later
                return False
            s.note(r, "advanced" if stuck is None else f"error: {NO_PROGRESS}", d.clock(), progress.epoch)
            r.seq += 1
            r.lease = None
            r.slices += 1
            r.consecutive_failures = 0 if stuck is None else r.consecutive_failures + 1
            r.error = stuck
            r.stage = progress.stage
            r.progress = with_history(progress_numbers(progress), s.history)
            r.dataset_report = _summary(progress.dataset_report) or r.dataset_report
            advanced[0] = True
            return True

        with s.watch.part("advance"):
            d.records.update(s.job_id, advance)
        if cancelled[0]:
            return self._cancel(s, progress)  # the next token finds the job final and is dropped
        if not advanced[0]:
            return s.answer("lease_lost", "the lease was taken over before the job advanced")
        return s.answer("advanced", f"next token {s.token.seq + 1}")

    def _succeed(self, s: _Slice, progress: Any, artifacts: dict[str, str]) -> SliceAnswer:
        def finish(r: JobRecord) -> None:
            s.note(r, "finished", self.deps.clock(), progress.epoch)
            r.slices += 1
            r.artifacts = artifacts
            r.metrics = dict(progress.metrics)
            r.dataset_report = _summary(progress.dataset_report) or r.dataset_report
            r.progress = with_history(progress_numbers(progress), s.history)
            r.stage = "done"
            r.error = None

        final = self._finalise(s, "succeeded", finish)
        if final is None:
            return s.answer("lease_lost", "the lease was taken over before the job was finalised")
        return s.answer("finished", f"job {final.status}")

    def _fail(
        self, s: _Slice, error: dict[str, Any], *, dataset_report: dict[str, Any] | None = None
    ) -> SliceAnswer:
        report_uri = self._upload_report(s.record, dataset_report) if dataset_report else None

        def fail(r: JobRecord) -> None:
            s.note(r, "failed", self.deps.clock())
            r.error = error
            r.dataset_report = _summary(dataset_report) or r.dataset_report
            if report_uri:
                r.artifacts = {**r.artifacts, "report": report_uri}

        if self._finalise(s, "failed", fail) is None:
            return s.answer("lease_lost", "the lease was taken over before the job was failed")
        return s.answer("failed", f"{error['code']}: {error['message'][:500]}")

    def _upload_report(self, record: JobRecord, report: dict[str, Any]) -> str | None:
        """A rejected dataset's full report → `<state>/jobs/<job_id>/report.json`, beside the record
        (the models bucket holds models only); the failed event carries a summary and links it."""
        uri = f"{self.deps.records.job_prefix(record.job_id)}/report.json"
        try:
            self.deps.store_for(uri).write_bytes(
                uri, json.dumps({"dataset": report}, indent=1).encode(), content_type="application/json"
            )
        except Exception as err:  # the summary in the event still says what went wrong
            log(
                logger,
                logging.WARNING,
                "could not upload the dataset report",
                job_id=record.job_id,
                error=repr(err),
            )
            return None
        return uri

    def _supersede(self, s: _Slice, message: str, newer_job: str | None) -> SliceAnswer:
        def supersede(r: JobRecord) -> None:
            s.note(r, "superseded", self.deps.clock())
            r.error = record_error(r.stage, Superseded.code, message, False)
            r.superseded_by = newer_job

        if self._finalise(s, "superseded", supersede) is None:
            return s.answer("lease_lost", "the lease was taken over before the job was superseded")
        return s.answer("superseded", message)

    def _cancel(self, s: _Slice, progress: Any = None) -> SliceAnswer:
        """Ends a job whose cancel was requested while this slice held it: `cancelled`, its one final
        result, its work files removed (nothing of this slice is uploaded)."""

        def cancel(r: JobRecord) -> None:
            s.note(r, "cancelled", self.deps.clock(), None if progress is None else progress.epoch)
            if progress is not None:
                r.stage = progress.stage
                r.progress = with_history(progress_numbers(progress), s.history)
            r.error = cancelled_error(r.stage)

        if self._finalise(s, "cancelled", cancel) is None:
            return s.answer("lease_lost", "the lease was taken over before the job was cancelled")
        return s.answer("cancelled", "cancelled on request")

    @property
    def finaliser(self) -> Finaliser:  # built per use: tests swap the deps' clock
        d = self.deps
        return Finaliser(d.records, d.results, d.line, d.store_for, d.clock)

    def _finalise(self, s: _Slice, status: str, change: Callable[[JobRecord], None]) -> JobRecord | None:
        """Moves the job to a final status (once), publishes its one final result, drops its work files.
        None: this slice no longer holds the job (the compare-and-swap checks the lease and the seq)."""
        with s.watch.part("finalise"):
            return self._move_to_final(s, status, change)

    def _move_to_final(self, s: _Slice, status: str, change: Callable[[JobRecord], None]) -> JobRecord | None:
        d = self.deps

        def mine(r: JobRecord) -> bool:
            if r.lease is None or r.lease.owner != d.owner or r.seq != s.token.seq:
                return False
            change(r)
            return True

        record, moved = self.finaliser.move(s.job_id, status, mine)
        if not moved and not record.is_final:
            return None  # another owner holds the job now: it finishes it
        try:
            published = self.finaliser.announce(record, claimed=moved)
        finally:
            self.scratch.forget(s.job_id)
        return published or record

    def _publish_final(self, record: JobRecord, *, claimed: bool) -> JobRecord | None:
        """publish_once for the final result. A failed publish gives the claim back and raises
        FinalNotPublished: the job keeps its status and the token is retried until the result is out."""
        return self.finaliser.publish(record, claimed=claimed)

    def _count_failure(self, s: _Slice, error: dict[str, Any]) -> SliceAnswer:
        d = self.deps
        counted = [0]

        def count(r: JobRecord) -> bool:
            if r.lease is None or r.lease.owner != d.owner or r.seq != s.token.seq:
                return False
            s.note(r, f"error: {error['code']}", d.clock())
            if r.consecutive_failures + 1 < d.settings.max_consecutive_failures:
                r.lease = None  # at the limit the lease is kept: this slice fails the job next
            r.consecutive_failures += 1
            r.error = error
            counted[0] = r.consecutive_failures
            return True

        with s.watch.part("failure"):
            d.records.update(s.job_id, count)
        limit = d.settings.max_consecutive_failures
        if counted[0] >= limit:
            return self._fail(s, error)
        return s.answer("retry", f"{error['code']}: {error['message']} (failure {counted[0]} of {limit})")

    def _local_dir(self, job_id: str) -> Path:
        """This instance's scratch folder of one job: the upload, `work/`, `out/` and `sync.json`."""
        return self.scratch.folder(job_id)

    def _report(self, job_id: str) -> dict[str, Any] | None:
        """The dataset report rvc_core writes even when it rejects a dataset."""
        from rvc_core.layout import WorkDir

        try:
            return json.loads(WorkDir(self._local_dir(job_id) / "work").report.read_text())
        except (OSError, ValueError):
            return None

    def _forget_work(self, job_id: str) -> None:
        """Stage outputs and checkpoints are no use once a job is final; the record stays."""
        self.scratch.forget(job_id)
        self.finaliser.delete_work(job_id)


# --- small helpers ----------------------------------------------------------------------------------
def _job_spec(record: JobRecord) -> Any:
    from rvc_core.jobspec import JobSpec

    return JobSpec(**record.spec)


def _summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the record keeps of a dataset report: the full one is `report.json` beside the model."""
    return None if report is None else summarised(report)


def _milestones(workdir: Path) -> frozenset[str]:
    """The stages the work dir has finished (rvc_core's stage markers)."""
    folder = WorkDir(workdir).stages_dir
    return frozenset(p.name for p in folder.glob("*.json")) if folder.is_dir() else frozenset()


def _position(progress: Any) -> tuple[str, int, int]:
    return str(progress.stage), int(progress.epoch or 0), int(progress.step or 0)


def _position_of(record: JobRecord) -> tuple[str, int, int]:
    p = record.progress
    return str(p.get("stage") or record.stage), int(p.get("epoch") or 0), int(p.get("step") or 0)
