"""The job's lease, renewed while a slice runs, carrying the latest progress into the record."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from consumer.jobs.records import JobRecord, JobRecords, Lease
from consumer.logs import log

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the job's lease every third of its life, carrying the latest progress into the record.

    If a renewal finds the lease gone (it expired and another owner took the job), `lost` is set and
    the slice stops at its next clean point without advancing the job.
    """

    def __init__(
        self, records: JobRecords, job_id: str, owner: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self.records = records
        self.job_id = job_id
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.lost = threading.Event()
        self._done = threading.Event()
        self._progress: dict[str, Any] | None = None
        self._stage: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.ttl)

    def note_progress(self, stage: str, progress: dict[str, Any]) -> None:
        self._stage, self._progress = stage, progress

    def _run(self) -> None:
        while not self._done.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception as err:  # a failed renewal is retried at the next beat; expiry decides
                log(logger, logging.WARNING, "lease renewal failed", job_id=self.job_id, error=repr(err))

    def renew(self) -> None:
        stage, progress = self._stage, self._progress

        def extend(r: JobRecord) -> bool:
            if r.lease is None or r.lease.owner != self.owner:
                self.lost.set()
                return False
            r.lease = Lease(self.owner, self.clock() + self.ttl)
            if progress is not None:
                r.stage, r.progress = stage or r.stage, progress
            return True

        self.records.update(self.job_id, extend)
