"""The job's lease: taken by compare-and-swap for one work token (or why not), then renewed while a
slice runs, carrying the latest progress into the record, and watching the record's cancel flag."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from consumer.errors import SLICE_LOST
from consumer.jobs.records import JobRecord, JobRecords, Lease
from consumer.logs import log
from consumer.work.record_errors import record_error
from consumer.work.tokens import WorkToken

logger = logging.getLogger(__name__)
# A new stage or epoch is written into the record at once (so `GET /jobs/<id>` shows it), but at
# most once per this many seconds: each write is one compare-and-swap of the record.
PROGRESS_WRITE_SECONDS = 5.0
# Between renewals the keeper reads the record this often (a read, never a write) to see a cancel
# (`POST /jobs/<id>:cancel` sets `cancel_requested_at`): the slice stops within seconds.
CANCEL_POLL_SECONDS = 2.0

# What a token's delivery found: the lease taken ("started": the job's first slice), or why not.
LeaseDecision = Literal["taken", "started", "final", "stale", "ahead", "busy"]
# The answer's detail for a token that cannot take the lease and is not a final job's.
DECISION_DETAIL: dict[str, str] = {
    "stale": "token behind the job's sequence",
    "ahead": "token ahead of the job's sequence; its predecessor has not advanced the record yet",
    "busy": "another live owner holds the job's lease",
}


def take_lease(
    records: JobRecords, token: WorkToken, owner: str, lease_seconds: float, clock: Callable[[], float]
) -> tuple[LeaseDecision, JobRecord]:
    """Takes the job's lease for this token, or says why not. Raises NotFound without a record.

    A lease left on the record that no other live owner holds (expired, or ours from a slice that
    never released it) means its slice died: that counts as a failure of the job."""
    decision: list[LeaseDecision] = ["stale"]

    def take(r: JobRecord) -> bool:
        now = clock()
        if r.is_final:
            decision[0] = "final"
            return False
        if token.seq < r.seq:
            decision[0] = "stale"
            return False
        if token.seq > r.seq:
            decision[0] = "ahead"
            return False
        if r.lease and r.lease.owner != owner and r.lease.expires_at > now:
            decision[0] = "busy"
            return False
        if r.lease:  # expired, or ours from a slice that never released it: that slice died
            r.consecutive_failures += 1
            r.error = record_error(r.stage, SLICE_LOST, f"slice {r.seq} stopped without finishing", True)
        r.lease = Lease(owner, now + lease_seconds)
        decision[0] = "started" if r.status == "queued" else "taken"
        r.status = "running"
        return True

    record = records.update(token.job_id, take)
    return decision[0], record


class LeaseKeeper:
    """Renews the job's lease every third of its life, carrying the latest progress into the record.

    If a renewal finds the lease gone (it expired and another owner took the job), `lost` is set and
    the slice stops at its next clean point without advancing the job. `owns()` says whether the
    last successful renewal is younger than the lease: a slice whose renewals failed for a whole
    lease may have lost the job without knowing it, and must write nothing more.

    `cancelled` is set once the record's cancel flag is seen (by a renewal, or by a read every
    `cancel_poll` seconds in between): the slice's `should_stop` then says stop.
    """

    def __init__(
        self,
        records: JobRecords,
        job_id: str,
        owner: str,
        ttl: float,
        clock: Callable[[], float],
        *,
        renewed_at: float | None = None,
        progress_interval: float = PROGRESS_WRITE_SECONDS,
        cancel_poll: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self.records = records
        self.job_id = job_id
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.progress_interval = progress_interval
        self.cancel_poll = cancel_poll
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.renewed_at = clock() if renewed_at is None else renewed_at  # last successful renewal
        self._done = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._stage: str | None = None
        self._written: tuple[str | None, Any, int] = (None, None, 0)  # (stage, epoch, history) written
        self._written_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join(timeout=self.ttl)

    def owns(self) -> bool:
        """True while the job is surely ours: not lost, and renewed less than a lease ago."""
        return not self.lost.is_set() and self.clock() - self.renewed_at < self.ttl

    def note_progress(self, stage: str, progress: dict[str, Any]) -> None:
        """Keeps the latest numbers for the next renewal; a new stage or epoch brings the renewal
        forward (at most one write per `progress_interval`), so `GET /jobs/<id>` shows it soon."""
        with self._lock:
            self._stage, self._progress = stage, progress
            changed = _position(stage, progress) != self._written
        if changed:
            self._wake.set()

    def _run(self) -> None:
        """Renews every third of the lease; writes new progress at once (at most one write per
        `progress_interval`); between renewals reads the record every `cancel_poll` seconds."""
        beat = self.ttl / 3
        renewed = checked = time.monotonic()
        pending = False  # new progress waits for its write
        while True:
            now = time.monotonic()
            due = [renewed + beat, checked + self.cancel_poll]
            if pending:
                due.append(now + max(0.0, self._written_at + self.progress_interval - self.clock()))
            if self._wake.wait(max(0.0, min(due) - now)):
                self._wake.clear()
                if self._done.is_set():
                    return
                pending = True
                continue
            if self._done.is_set():
                return
            now = time.monotonic()
            progress_due = pending and self.clock() >= self._written_at + self.progress_interval
            if progress_due or now - renewed >= beat * 0.99:
                pending, renewed, checked = False, now, now
                try:
                    self.renew()
                except Exception as err:  # a failed renewal is retried at the next beat; expiry decides
                    log(logger, logging.WARNING, "lease renewal failed", job_id=self.job_id, error=repr(err))
            elif now - checked >= self.cancel_poll * 0.99:
                checked = now
                self.check_cancel()  # between renewals: a read only

    def check_cancel(self) -> None:
        """Reads the record (never writes it) and sets `cancelled` when a cancel was asked for."""
        if self.cancelled.is_set():
            return
        try:
            record = self.records.get(self.job_id)
        except Exception as err:  # the next renewal reads it too
            log(logger, logging.WARNING, "cancel check failed", job_id=self.job_id, error=repr(err))
            return
        if record is not None and record.cancel_requested_at:
            self.cancelled.set()

    def renew(self) -> None:
        with self._lock:
            stage, progress = self._stage, self._progress
        attempted = self.clock()

        def extend(r: JobRecord) -> bool:
            if r.lease is None or r.lease.owner != self.owner:
                self.lost.set()
                return False
            if r.cancel_requested_at:
                self.cancelled.set()
            r.lease = Lease(self.owner, attempted + self.ttl)
            if progress is not None:
                r.stage, r.progress = stage or r.stage, progress
            return True

        self.records.update(self.job_id, extend)
        if not self.lost.is_set():
            self.renewed_at = attempted
            with self._lock:
                self._written = _position(stage, progress)
                self._written_at = attempted


def _position(stage: str | None, progress: dict[str, Any] | None) -> tuple[str | None, Any, int]:
    """What makes a progress write due at once: a new stage, epoch, or finished-epoch entry."""
    if progress is None:
        return stage, None, 0
    return stage, progress.get("epoch"), len(progress.get("history") or ())
