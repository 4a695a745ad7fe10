"""What a slice answers the work queue: its outcome, the HTTP status that tells the queue whether to
retry, and where the slice's time went."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal[
    "advanced",
    "finished",
    "failed",
    "superseded",
    "cancelled",
    "stale",
    "unknown_job",
    "malformed",
    "busy",
    "ahead",
    "retry",
    "lease_lost",
    "shutting_down",
]
# The queue retries anything but 2xx, with bounded backoff and no limit: 429 and 503 mean "later".
HTTP_STATUS: dict[Outcome, int] = {
    "advanced": 200,
    "finished": 200,
    "failed": 200,
    "superseded": 200,
    "cancelled": 200,
    "stale": 200,
    "unknown_job": 200,
    "malformed": 200,
    "lease_lost": 200,
    "busy": 429,
    "ahead": 429,
    "retry": 503,
    "shutting_down": 503,
}


@dataclass(frozen=True)
class SliceAnswer:
    outcome: Outcome
    detail: str = ""
    job_id: str | None = None
    seq: int | None = None
    # Seconds per part of the slice (consumer.work.slices.SLICE_PARTS) and "total": what was
    # training, what was overhead.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.outcome]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outcome": self.outcome, "detail": self.detail, "job_id": self.job_id, "seq": self.seq,
        }  # fmt: skip
        if self.timings:
            out["timings"] = self.timings
        return out
