"""Result CloudEvents on the results topic, in the Pub/Sub protocol binding (binary mode).

Attributes: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-subject` (the model name),
`ce-time`, `content-type`, plus plain `job_id`, `model_name` and `status` for subscription filters.
Data: JSON with the job id, source object, spec, and per kind the progress, artifacts, metrics,
dataset report or error. `ce-id` is derived from the job and the kind, so a result published twice
(after a crash between publishing and recording it) carries the same id and can be deduplicated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from consumer.jobs.records import JobRecord, JobRecords

if TYPE_CHECKING:
    from consumer.adapters.messaging import Publisher

ResultKind = Literal["accepted", "progress", "succeeded", "failed"]
TYPE_PREFIX = "dev.rvc-trainer.training"
EVENT_TYPES: dict[ResultKind, str] = {
    "accepted": f"{TYPE_PREFIX}.accepted",
    "progress": f"{TYPE_PREFIX}.progress",
    "succeeded": f"{TYPE_PREFIX}.succeeded",
    "failed": f"{TYPE_PREFIX}.failed",
}
FINAL_KINDS: frozenset[str] = frozenset({"succeeded", "failed"})
CE_PREFIX = "ce-"


def event_source(project: str) -> str:
    return f"//rvc-trainer.{project}/consumer"


def event_data(kind: ResultKind, record: JobRecord, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON data of a result: what a subscriber needs without reading the job record."""
    data: dict[str, Any] = {
        "job_id": record.job_id,
        "model_name": record.model_name,
        "status": record.status,
        "source": asdict(record.source),
        "spec": record.spec,
    }
    if kind == "accepted":
        data["unknown_metadata_keys"] = list(record.unknown_keys)
    if kind == "progress":
        data["stage"] = record.stage
        data["progress"] = record.progress
    if kind == "succeeded":
        data.update(artifacts=record.artifacts, metrics=record.metrics, dataset_report=record.dataset_report)
    if kind == "failed":
        data.update(error=record.error, dataset_report=record.dataset_report)
        if record.superseded_by:
            data["superseded_by"] = record.superseded_by
    data.update(extra or {})
    return data


def event_id(kind: ResultKind, record: JobRecord, extra_id: str = "") -> str:
    # One final event per job: its id does not depend on which instance or attempt published it.
    return f"{record.job_id}.{kind}" + (f".{extra_id}" if extra_id else "")


@dataclass(frozen=True)
class ResultMessage:
    data: bytes
    attributes: dict[str, str]


def result_message(
    kind: ResultKind,
    record: JobRecord,
    *,
    project: str,
    extra: Mapping[str, Any] | None = None,
    extra_id: str = "",
    clock: Any = time.time,
) -> ResultMessage:
    from cloudevents.http import CloudEvent

    event = CloudEvent(
        {
            "id": event_id(kind, record, extra_id),
            "source": event_source(project),
            "type": EVENT_TYPES[kind],
            "subject": record.model_name,
            "time": datetime.fromtimestamp(clock(), UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
        },
        event_data(kind, record, extra),
    )
    attributes = {
        f"{CE_PREFIX}{name}": str(value)
        for name, value in event.get_attributes().items()
        if name != "datacontenttype" and value is not None
    }
    attributes["content-type"] = "application/json"
    attributes.update(job_id=record.job_id, model_name=record.model_name, status=record.status)
    body = json.dumps(event.get_data(), sort_keys=True, default=str).encode("utf-8")
    return ResultMessage(body, attributes)


class Results:
    """Publishes results to the results topic."""

    def __init__(self, publisher: Publisher, topic: str, *, project: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.project = project

    def publish(
        self,
        kind: ResultKind,
        record: JobRecord,
        *,
        extra: Mapping[str, Any] | None = None,
        extra_id: str = "",
    ) -> str:
        message = result_message(kind, record, project=self.project, extra=extra, extra_id=extra_id)
        return self.publisher.publish(self.topic, message.data, message.attributes)


def final_kind(record: JobRecord) -> ResultKind:
    """The one final result of a finished job: `succeeded`, or `failed` (failed and superseded)."""
    return "succeeded" if record.status == "succeeded" else "failed"


# A claim to publish a result, older than this, was left by a publisher that died: take it over.
CLAIM_SECONDS = 30.0
Claim = Literal["mine", "done", "busy"]


def claim_announcement(
    records: JobRecords, job_id: str, kind: ResultKind, *, clock: Callable[[], float] = time.time
) -> tuple[Claim, JobRecord]:
    """Claims the right to publish `kind`: "done" (already published), "busy" (a live publisher
    claimed it moments ago: retry later) or "mine". Duplicate deliveries running at the same time
    therefore publish a result once, and a claim left by a crash expires."""
    verdict: list[Claim] = ["busy"]

    def take(r: JobRecord) -> bool:
        if kind in r.announced:
            verdict[0] = "done"
            return False
        claimed_at = r.announcing.get(kind)
        if claimed_at is not None and clock() - claimed_at < CLAIM_SECONDS:
            verdict[0] = "busy"
            return False
        r.announcing[kind] = clock()
        verdict[0] = "mine"
        return True

    record = records.update(job_id, take)
    return verdict[0], record


def mark_announced(records: JobRecords, job_id: str, kind: ResultKind) -> JobRecord:
    def mark(r: JobRecord) -> bool:
        r.announcing.pop(kind, None)
        if kind not in r.announced:
            r.announced.append(kind)
        return True

    return records.update(job_id, mark)


def publish_once(
    results: Results, records: JobRecords, record: JobRecord, kind: ResultKind, *, claimed: bool = False
) -> JobRecord | None:
    """Publishes `kind` unless it went out already, then records that it did. `claimed`: the caller
    wrote the claim itself (with the change that made the result due). None: another publisher holds
    a fresh claim (answer "retry later"). A crash between publishing and recording republishes it on
    the next delivery, with the same `ce-id`."""
    if kind in record.announced:
        return record
    if not claimed:
        verdict, record = claim_announcement(records, record.job_id, kind)
        if verdict == "done":
            return record
        if verdict == "busy":
            return None
    results.publish(kind, record)
    return mark_announced(records, record.job_id, kind)


@dataclass(frozen=True)
class ReceivedResult:
    """A result as a subscriber sees it (tests, the demo)."""

    kind: str  # accepted, progress, succeeded, failed
    id: str
    subject: str
    attributes: dict[str, str]
    data: dict[str, Any]


def read_result(data: bytes, attributes: Mapping[str, str]) -> ReceivedResult:
    """Reverses `result_message`: a pulled or pushed Pub/Sub message → the result it carries."""
    event_type = attributes.get(f"{CE_PREFIX}type", "")
    kinds = {v: k for k, v in EVENT_TYPES.items()}
    if event_type not in kinds:
        raise ValueError(f"not a training result: ce-type {event_type!r}")
    return ReceivedResult(
        kind=kinds[event_type],
        id=attributes.get(f"{CE_PREFIX}id", ""),
        subject=attributes.get(f"{CE_PREFIX}subject", ""),
        attributes=dict(attributes),
        data=json.loads(data) if data else {},
    )
