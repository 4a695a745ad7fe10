"""The waiting line: which jobs wait for their first slice, and in what order.

Waiting is a state, not a failure. A job enters the line when intake queues its first task and
leaves it when its first slice starts (it is then `running`) or when it ends. Each state is an
empty marker object in the state bucket, named so that a listing comes back in arrival order:
`queue/waiting/<created_at>_<job_id>` and `queue/running/<created_at>_<job_id>`. A status poll
lists two short prefixes; it never reads every job ever made.

The start estimate follows the queue's fair sharing: each running job has one task in the queue
and each waiting job ahead one more, and `slots` of them are served per slice time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.jobs.records import JobRecord

WAITING = "queue/waiting"
RUNNING = "queue/running"


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1: the next job to start
    waiting: int  # jobs waiting for their first slice, this one included
    running: int  # jobs that have started and not ended
    estimated_start_seconds: float  # from now, if every slice takes the whole budget

    def as_json(self) -> dict[str, float | int]:
        return {
            "position": self.position,
            "waiting": self.waiting,
            "running": self.running,
            "estimated_start_seconds": self.estimated_start_seconds,
        }


class WaitingLine:
    def __init__(self, store: ObjectStore, state_url: str, *, slots: int, slice_seconds: float) -> None:
        self.store = store
        self.state_url = state_url.rstrip("/")
        self.slots = max(1, slots)
        self.slice_seconds = slice_seconds

    def enter(self, record: JobRecord) -> None:
        self.store.write_bytes(self._marker(WAITING, record), b"", content_type="text/plain")

    def started(self, record: JobRecord) -> None:
        self.store.write_bytes(self._marker(RUNNING, record), b"", content_type="text/plain")
        self._remove(self._marker(WAITING, record))

    def leave(self, record: JobRecord) -> None:
        for state in (WAITING, RUNNING):
            self._remove(self._marker(state, record))

    def position(self, record: JobRecord) -> QueuePosition | None:
        """Where a waiting job stands; None once it has started (or if it never entered)."""
        waiting = sorted(self._keys(WAITING))
        key = _key(record)
        if key not in waiting:
            return None
        running = len(self._keys(RUNNING))
        ahead = waiting.index(key)
        tasks_ahead = running + ahead
        rounds = tasks_ahead // self.slots  # slice times before a slot is free for this job
        return QueuePosition(ahead + 1, len(waiting), running, rounds * self.slice_seconds)

    def _keys(self, state: str) -> list[str]:
        prefix = f"{self.state_url}/{state}/"
        return [info.uri.removeprefix(prefix) for info in self.store.list(prefix)]

    def _marker(self, state: str, record: JobRecord) -> str:
        return f"{self.state_url}/{state}/{_key(record)}"

    def _remove(self, uri: str) -> None:
        self.store.delete(uri)  # already gone is fine


def _key(record: JobRecord) -> str:
    # ISO times sort as they happened; the job id breaks ties. No ':' in object names.
    return f"{record.created_at.replace(':', '')}_{record.job_id}"
