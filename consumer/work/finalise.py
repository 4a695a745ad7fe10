"""Ending a job: its final status (once, by compare-and-swap with the publish-once claim), its one
final result, leaving the waiting line, and removing its work files from the state bucket.

One code path for both roles: a slice finalises the job it holds (succeeded, failed, superseded,
cancelled at its next check), and the api finalises a job that no slice holds when it is cancelled
(`POST /jobs/<id>:cancel`). Light on purpose: the api imports it and never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from consumer.jobs.records import JobRecord, JobRecords, now_iso
from consumer.jobs.results import ResultKind, Results, final_kind, publish_once
from consumer.jobs.waiting import WaitingLine
from consumer.logs import log
from consumer.work.mirror import WorkdirMirror
from consumer.work.record_errors import record_error

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore

logger = logging.getLogger(__name__)
CANCELLED = "cancelled"  # the error code of a cancelled job

NO_LOCAL_DIR = Path("/nonexistent")  # deleting the remote work files never touches a local dir
CancelOutcome = Literal["cancelled", "requested", "final"]


class FinalNotPublished(Exception):
    """The job is final but its final result could not be published (yet): answer "retry later"."""


def cancelled_error(stage: str | None) -> dict[str, object]:
    return record_error(stage, CANCELLED, "cancelled on request", retryable=False)


@dataclass
class Finaliser:
    records: JobRecords
    results: Results
    line: WaitingLine
    store_for: Callable[[str], ObjectStore]
    clock: Callable[[], float] = time.time

    def move(self, job_id: str, status: str, change: Callable[[JobRecord], bool]) -> tuple[JobRecord, bool]:
        """Moves the job to `status` by compare-and-swap when `change` (which checks that the caller
        may, mutates the record and returns True) allows it, writing the claim to publish the final
        result with it. Returns the record as stored and whether this call moved it."""
        moved = [False]

        def apply(r: JobRecord) -> bool:
            moved[0] = False
            if r.is_final or not change(r):
                return False
            self._to_final(r, status)
            moved[0] = True
            return True

        record = self.records.update(job_id, apply)
        return record, moved[0]

    def _to_final(self, r: JobRecord, status: str) -> None:
        r.status = status  # type: ignore[assignment]
        r.lease = None
        r.announcing[final_kind(r)] = self.clock()  # the claim to publish the final result

    def publish(self, record: JobRecord, *, claimed: bool) -> JobRecord | None:
        """publish_once for the final result. A failed publish gives the claim back and raises
        FinalNotPublished: the job keeps its status and its pending work token publishes it later.
        None: another publisher holds a fresh claim."""
        kind = final_kind(record)
        try:
            return publish_once(self.results, self.records, record, kind, claimed=claimed)
        except Exception as err:
            log(logger, logging.ERROR, "final result not published", job_id=record.job_id, kind=kind,
                error=repr(err))  # fmt: skip
            try:
                self.records.update(record.job_id, _release_claim(kind))
            except Exception as release_err:  # the claim then expires on its own (CLAIM_SECONDS)
                log(logger, logging.WARNING, "claim not released", job_id=record.job_id,
                    error=repr(release_err))  # fmt: skip
            raise FinalNotPublished(
                f"job {record.status}; its {kind} result is not published yet: {err!r}"[:2000]
            ) from err

    def delete_work(self, job_id: str) -> None:
        """Stage outputs and checkpoints are no use once a job is final; the record stays."""
        try:
            store = self.store_for(self.records.state_url)
            WorkdirMirror(store, f"{self.records.job_prefix(job_id)}/work", NO_LOCAL_DIR).delete_remote()
        except Exception as err:  # leftovers cost storage, not correctness
            log(logger, logging.WARNING, "could not remove a finished job's work files", job_id=job_id,
                error=repr(err))  # fmt: skip

    def announce(self, record: JobRecord, *, claimed: bool) -> JobRecord | None:
        """A final job's result (unless it went out), its leaving the waiting line, its work files
        removed (whatever happened to the publish)."""
        try:
            published = self.publish(record, claimed=claimed)
            self.line.leave(record)
        finally:
            self.delete_work(record.job_id)
        return published

    def cancel(self, job_id: str) -> tuple[CancelOutcome, JobRecord]:
        """`POST /jobs/<id>:cancel`. A job a live slice holds gets the flag (the slice stops at its next
        check and finalises it); any other unfinished job (queued, waiting its turn, between slices,
        or held by a lease that expired) is cancelled here and now: its pending task then finds it
        final and is dropped. Raises NotFound for an unknown job. A final result that cannot be
        published now goes out with the job's next work token."""
        verdict: list[CancelOutcome] = ["final"]

        def apply(r: JobRecord) -> bool:
            verdict[0] = "final"
            if r.is_final:
                return False
            stamp = now_iso(self.clock)
            if r.lease is not None and r.lease.expires_at > self.clock():  # a live slice holds it
                verdict[0] = "requested"
                if r.cancel_requested_at:
                    return False
                r.cancel_requested_at = stamp
                return True
            r.cancel_requested_at = r.cancel_requested_at or stamp
            r.error = cancelled_error(r.stage)
            self._to_final(r, "cancelled")
            verdict[0] = "cancelled"
            return True

        record = self.records.update(job_id, apply)
        if verdict[0] == "cancelled":
            # If the publish fails, the job stays cancelled and its pending work token publishes it.
            with contextlib.suppress(FinalNotPublished):
                record = self.announce(record, claimed=True) or record
        return verdict[0], record


def _release_claim(kind: ResultKind) -> Callable[[JobRecord], bool]:
    def release(r: JobRecord) -> bool:
        return r.announcing.pop(kind, None) is not None

    return release
