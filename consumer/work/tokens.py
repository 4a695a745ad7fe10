"""Work tokens `{job_id, seq}` and the queue they travel in: one task per token, named
`<job_id>-<seq>`, so creating the same token twice makes one task and one slice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumer.adapters.tasks import TaskQueue


@dataclass(frozen=True)
class WorkToken:
    job_id: str
    seq: int

    @property
    def task_name(self) -> str:
        return f"{self.job_id}-{self.seq}"

    def encode(self) -> bytes:
        return json.dumps({"job_id": self.job_id, "seq": self.seq}).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> WorkToken:
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("job_id"), str):
            raise ValueError("a work token is {job_id, seq}")
        seq = raw.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError("a work token's seq is a non-negative integer")
        return cls(raw["job_id"], seq)


def read_work_delivery(body: bytes) -> WorkToken | str:
    """A task's body (the token as JSON) → the token, or why it is not one."""
    try:
        return WorkToken.decode(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        return f"not a work token: {err}"


class WorkQueue:
    """Queues tokens as tasks of the work queue."""

    def __init__(self, tasks: TaskQueue) -> None:
        self.tasks = tasks

    def enqueue(self, token: WorkToken) -> bool:
        """True if this created the token's task; False if it existed already (nothing changed)."""
        return self.tasks.create(token.task_name, token.encode())
