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

ResultKind = Literal["accepted", "progress", "succeeded", "failed", "cancelled"]
TYPE_PREFIX = "dev.rvc-trainer.training"
EVENT_TYPES: dict[ResultKind, str] = {
    "accepted": f"{TYPE_PREFIX}.accepted",
    "progress": f"{TYPE_PREFIX}.progress",
    "succeeded": f"{TYPE_PREFIX}.succeeded",
    "failed": f"{TYPE_PREFIX}.failed",
    "cancelled": f"{TYPE_PREFIX}.cancelled",
}
FINAL_KINDS: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
CE_PREFIX = "ce-"

# Every result's data stays under this many bytes, far below Pub/Sub's 10 MB per message: a dataset
# report can list thousands of entries with names of any length, so events carry a bounded summary
# (long strings cut, long lists truncated with their full count beside them) and the full report is
# `report.json` beside the model (`artifacts.report`). An error message is capped on its own too.
MAX_EVENT_BYTES = 256 * 1024
MAX_ERROR_MESSAGE_CHARS = 2000
MAX_ATTRIBUTE_BYTES = 1024  # Pub/Sub's limit for an attribute value
# (longest string, most list items) tried in turn until the event fits.
SUMMARY_LEVELS: tuple[tuple[int, int], ...] = ((2000, 50), (500, 20), (120, 5), (40, 0))


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
        data["progress"] = event_progress(record.progress)
    if kind == "succeeded":
        data.update(artifacts=record.artifacts, metrics=record.metrics, dataset_report=record.dataset_report)
    if kind == "failed":
        data.update(error=capped_error(record.error), dataset_report=record.dataset_report)
        if record.artifacts.get("report"):
            data["artifacts"] = {"report": record.artifacts["report"]}
        if record.superseded_by:
            data["superseded_by"] = record.superseded_by
    if kind == "cancelled":  # where it stopped; its work files are gone
        data.update(
            error=capped_error(record.error),
            stage=record.stage,
            progress=event_progress(record.progress),
            dataset_report=record.dataset_report,
        )
    if kind in FINAL_KINDS and record.artifacts.get("report"):
        data["report_uri"] = record.artifacts["report"]
    data.update(extra or {})
    return bounded_data(data)


def event_progress(progress: Mapping[str, Any]) -> dict[str, Any]:
    """The record's progress without its per-epoch `history` (up to 200 entries, for the job page):
    events carry the latest numbers only."""
    return {k: v for k, v in progress.items() if k != "history"}


def capped_error(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The error with its message cut to MAX_ERROR_MESSAGE_CHARS."""
    if error is None:
        return None
    out = dict(error)
    if isinstance(out.get("message"), str):
        out["message"] = cap_string(out["message"], MAX_ERROR_MESSAGE_CHARS)
    return out


def cap_string(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def summarised(
    value: Any, *, max_chars: int = SUMMARY_LEVELS[0][0], max_items: int = SUMMARY_LEVELS[0][1]
) -> Any:
    """`value` with strings cut to `max_chars` and lists (and dicts) to `max_items` entries. A
    truncated list under key `k` of a dict gets `k_total` (its full length) beside it."""
    if isinstance(value, str):
        return cap_string(value, max_chars)
    if isinstance(value, list | tuple):
        return [summarised(v, max_chars=max_chars, max_items=max_items) for v in value[:max_items]]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        items = list(value.items())
        for key, item in items[: max(max_items, 16)]:  # a report's own keys are never cut
            key = cap_string(str(key), max_chars)
            out[key] = summarised(item, max_chars=max_chars, max_items=max_items)
            if isinstance(item, list | tuple) and len(item) > max_items:
                out[f"{key}_total"] = len(item)
        if len(items) > max(max_items, 16):
            out["keys_total"] = len(items)
        return out
    return value


def event_bytes(data: Mapping[str, Any]) -> int:
    return len(json.dumps(data, sort_keys=True, default=str).encode("utf-8"))


def bounded_data(data: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """`data` itself when it fits in `limit` bytes, else summarised more and more until it does;
    at worst only the job's identity, its status, its error and `"truncated": true`."""
    if event_bytes(data) <= limit:
        return data
    for max_chars, max_items in SUMMARY_LEVELS:
        smaller = summarised(data, max_chars=max_chars, max_items=max_items)
        smaller["truncated"] = True
        if event_bytes(smaller) <= limit:
            return smaller
    core = {k: data[k] for k in ("job_id", "status", "report_uri") if k in data}
    core.update(model_name=cap_string(str(data.get("model_name", "")), 200), truncated=True)
    if data.get("error"):
        core["error"] = summarised(data["error"], max_chars=500, max_items=5)
    return core


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
    attributes = {k: _cap_bytes(v, MAX_ATTRIBUTE_BYTES) for k, v in attributes.items()}
    body = json.dumps(event.get_data(), sort_keys=True, default=str).encode("utf-8")
    return ResultMessage(body, attributes)


def _cap_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


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
    """The one final result of a finished job: `succeeded`, `cancelled`, or `failed` (failed and
    superseded)."""
    if record.status in ("succeeded", "cancelled"):
        return record.status  # type: ignore[return-value]
    return "failed"


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

    kind: str  # accepted, progress, succeeded, failed, cancelled
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
