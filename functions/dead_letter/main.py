"""The dead-letter function: a message that exhausted its deliveries becomes one `failed` result.

Pub/Sub moves an intake notification or a work token to the dead-letter topic after
`max_delivery_attempts` failed pushes; Eventarc hands each such message to `handle`. For its job:

- the job already has a final status → its final result is published if it never went out, else
  nothing happens (exactly one final result per job);
- a work token older than the job's current `seq` (the job moved on) or an intake whose job already
  started → nothing happens;
- the job is leased by a live slice → `RetryLater` is raised and Eventarc redelivers later;
- otherwise the job record is marked failed (`dead_lettered`, by compare-and-swap) and one `failed`
  result carrying the delivery count and the original attributes is published. An intake that never
  made a record gets a failed record, so `GET /jobs/<id>` explains it too.

Deployed alone, so it cannot import `consumer`: the few shapes it shares (job record, result
CloudEvent, job id, the intake screens) are small copies; tests/test_dead_letter.py checks that they
agree with consumer's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import functions_framework

# --- shapes shared with consumer/ -------------------------------------------------------------------
FINAL_STATUSES = frozenset({"succeeded", "failed", "superseded"})  # consumer/jobs/records.py
CE_TYPE_PREFIX = "dev.rvc-trainer.training"  # consumer/jobs/results.py
COMPOSITE_PARTS_PREFIX = "gcloud/tmp/"  # consumer/jobs/intake.py
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # consumer/jobs/metadata.py
MODEL_NAME_KEYS = frozenset({"model_name", "modelname"})  # consumer/jobs/metadata.py: ALIASES → model_name
RECORD_DEFAULTS: dict[str, Any] = {  # consumer.jobs.records.JobRecord's fields after the required four
    "status": "queued",
    "stage": "queued",
    "seq": 0,
    "lease": None,
    "consecutive_failures": 0,
    "slices": 0,
    "progress": {},
    "artifacts": {},
    "metrics": {},
    "dataset_report": None,
    "error": None,
    "unknown_keys": [],
    "output_url": None,
    "announced": [],
    "announcing": {},
    "superseded_by": None,
    "history": [],
    "created_at": "",
    "updated_at": "",
}

# Attributes Pub/Sub adds to a dead-lettered message (everything else is the original's).
DEAD_LETTER_ATTRIBUTE_PREFIX = "CloudPubSubDeadLetter"
DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_SUBSCRIPTION_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"

ERROR_CODE = "dead_lettered"
CAS_ATTEMPTS = 20
CALL_TIMEOUT_S = 30.0

ResultKind = Literal["succeeded", "failed"]
Action = Literal[
    "reported", "already_reported", "claimed_elsewhere", "stale", "job_started", "unknown_job", "ignored"
]
CLAIM_SECONDS = 30.0  # consumer/jobs/results.py: a publish claim older than this was left by a crash


class RetryLater(Exception):
    """The job is leased by a live slice: decide once the lease is over (Eventarc redelivers)."""


class Conflict(Exception):
    """A compare-and-swap write lost a race: re-read and try again."""


# --- what arrived ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    data: bytes
    attributes: dict[str, str]  # the original message's attributes
    delivery_count: int | None  # attempts before Pub/Sub gave up
    source_subscription: str  # the subscription it was dead-lettered from

    @classmethod
    def from_push(cls, body: Mapping[str, Any]) -> DeadLetter:
        """The Pub/Sub push envelope Eventarc delivers (`{"message": {...}, "subscription": ...}`)."""
        message = body.get("message")
        if not isinstance(message, Mapping):
            raise ValueError("no Pub/Sub message in the event")
        attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
        count = attributes.get(DELIVERY_COUNT_ATTRIBUTE, "")
        return cls(
            message_id=str(message.get("messageId") or message.get("message_id") or ""),
            data=base64.b64decode(message.get("data") or ""),
            attributes={
                k: v for k, v in attributes.items() if not k.startswith(DEAD_LETTER_ATTRIBUTE_PREFIX)
            },
            delivery_count=int(count) if count.isdigit() else None,
            source_subscription=attributes.get(SOURCE_SUBSCRIPTION_ATTRIBUTE, ""),
        )


@dataclass(frozen=True)
class WorkToken:
    job_id: str
    seq: int


@dataclass(frozen=True)
class Upload:
    bucket: str
    name: str
    generation: int
    metadata: dict[str, str]  # custom metadata, when the notification carried the object

    @property
    def job_id(self) -> str:
        return job_id_for(f"{self.bucket}/{self.name}#{self.generation}")


def job_id_for(source_key: str) -> str:
    """consumer.jobs.records.job_id_for: a short stable hash of `bucket/object#generation`."""
    return hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]


def read_letter(letter: DeadLetter, inbox_prefix: str) -> WorkToken | Upload | str:
    """The job a dead-lettered message was about, or why it was about none."""
    attributes = letter.attributes
    if "bucketId" in attributes and "objectId" in attributes:
        return _read_notification(letter, inbox_prefix)
    try:
        raw = json.loads(letter.data)
    except ValueError:
        return "neither a storage notification nor a work token"
    seq = raw.get("seq") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and isinstance(raw.get("job_id"), str) and type(seq) is int and seq >= 0:
        return WorkToken(raw["job_id"], seq)
    return "neither a storage notification nor a work token"


def _read_notification(letter: DeadLetter, inbox_prefix: str) -> Upload | str:
    attributes = letter.attributes
    name = attributes["objectId"]
    event_type = attributes.get("eventType", "OBJECT_FINALIZE")
    # The service answers these 2xx and ignores them; dead-lettered only while it was unreachable.
    if event_type != "OBJECT_FINALIZE":
        return f"{event_type} is not an upload"
    if name.startswith(COMPOSITE_PARTS_PREFIX):
        return f"{name} is a part of a parallel composite upload"
    if not name.startswith(inbox_prefix) or name.endswith("/") or not name.lower().endswith(".zip"):
        return f"{name} is not a dataset zip under {inbox_prefix}"
    resource: dict[str, Any] = {}
    if letter.data:
        try:
            parsed = json.loads(letter.data)
            resource = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            resource = {}
    generation = attributes.get("objectGeneration") or resource.get("generation")
    try:
        generation_number = int(str(generation))
    except ValueError:
        return f"{name}: no object generation in the notification"
    metadata = resource.get("metadata") if isinstance(resource.get("metadata"), dict) else {}
    return Upload(
        attributes["bucketId"], name, generation_number, {str(k): str(v) for k, v in metadata.items()}
    )


# --- the job record ---------------------------------------------------------------------------------------
class RecordStore(Protocol):
    def read(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        """The record and its generation, or None when the job has none."""

    def write(self, job_id: str, record: dict[str, Any], *, if_generation_match: int) -> None:
        """Writes only if the stored generation still matches (0: only if absent); else `Conflict`."""


class ResultPublisher(Protocol):
    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str: ...


def now_iso(clock: Callable[[], float]) -> str:
    """consumer.jobs.records.now_iso."""
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The bytes consumer.jobs.records writes: sorted, indented JSON and a newline."""
    return (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def model_name_hint(metadata: Mapping[str, str], object_name: str) -> str:
    """A model name for a job that never got a record: the metadata's, else the zip's stem."""
    for key, value in metadata.items():
        if key.strip().lower().replace("-", "_") in MODEL_NAME_KEYS and MODEL_NAME.match(value):
            return value
    stem = object_name.rsplit("/", 1)[-1]
    stem = stem[: -len(".zip")] if stem.lower().endswith(".zip") else stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:64] or "model"


def new_failed_record(upload: Upload, error: dict[str, Any], stamp: str) -> dict[str, Any]:
    """A whole record (every consumer field) for an intake that died before making one."""
    return {
        "job_id": upload.job_id,
        "model_name": model_name_hint(upload.metadata, upload.name),
        "source": {
            "uri": f"gs://{upload.bucket}/{upload.name}",
            "bucket": upload.bucket,
            "name": upload.name,
            "generation": upload.generation,
        },
        "spec": {},
        **json.loads(json.dumps(RECORD_DEFAULTS)),  # fresh copies of the mutable defaults
        "status": "failed",
        "stage": "intake",
        "error": error,
        "created_at": stamp,
        "updated_at": stamp,
    }


# --- the result CloudEvent (consumer/jobs/results.py, Pub/Sub binding, binary mode) ----------------------------
def event_data(
    kind: ResultKind, record: Mapping[str, Any], extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": record["job_id"],
        "model_name": record["model_name"],
        "status": record["status"],
        "source": record["source"],
        "spec": record["spec"],
    }
    if kind == "succeeded":
        data.update(
            artifacts=record.get("artifacts", {}),
            metrics=record.get("metrics", {}),
            dataset_report=record.get("dataset_report"),
        )
    else:
        data.update(error=record.get("error"), dataset_report=record.get("dataset_report"))
        if record.get("superseded_by"):
            data["superseded_by"] = record["superseded_by"]
    data.update(extra or {})
    return data


def result_message(
    kind: ResultKind,
    record: Mapping[str, Any],
    *,
    project: str,
    extra: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[bytes, dict[str, str]]:
    """(data, attributes) exactly as the service publishes them; the `ce-id` is the one the service
    would use, so a subscriber can drop a duplicate final result."""
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": f"{record['job_id']}.{kind}",
        "ce-source": f"//rvc-trainer.{project}/consumer",
        "ce-type": f"{CE_TYPE_PREFIX}.{kind}",
        "ce-subject": record["model_name"],
        "ce-time": datetime.fromtimestamp(clock(), UTC).isoformat().replace("+00:00", "Z"),
        "content-type": "application/json",
        "job_id": record["job_id"],
        "model_name": record["model_name"],
        "status": record["status"],
    }
    body = json.dumps(event_data(kind, record, extra), sort_keys=True, default=str).encode("utf-8")
    return body, attributes


# --- the decision -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    action: Action
    job_id: str | None
    reason: str


@dataclass(frozen=True)
class Deps:
    store: RecordStore
    results: ResultPublisher
    project: str
    inbox_prefix: str = "datasets/"
    clock: Callable[[], float] = time.time


def dead_letter_error(letter: DeadLetter, about: WorkToken | Upload, stage: str) -> dict[str, Any]:
    what = "work token" if isinstance(about, WorkToken) else "upload notification"
    attempts = (
        f"{letter.delivery_count} delivery attempts" if letter.delivery_count else "every delivery attempt"
    )
    return {
        "stage": stage,
        "code": ERROR_CODE,
        "message": (
            f"the service failed {attempts} of this job's {what} "
            f"({letter.source_subscription or 'unknown subscription'}); upload the dataset again to retry"
        ),
        "retryable": True,
    }


def dead_letter_details(letter: DeadLetter) -> dict[str, Any]:
    return {
        "delivery_count": letter.delivery_count,
        "source_subscription": letter.source_subscription,
        "message_id": letter.message_id,
        "attributes": dict(letter.attributes),
    }


def _lease_alive(record: Mapping[str, Any], now: float) -> bool:
    lease = record.get("lease")
    return bool(lease) and float(lease.get("expires_at", 0)) > now


def _why_not_fail(record: Mapping[str, Any], about: WorkToken | Upload, now: float) -> Outcome | None:
    """Why this job must not be failed now (an Outcome, or RetryLater), or None to fail it."""
    job_id = record["job_id"]
    if record["status"] in FINAL_STATUSES:
        return None  # handled by the caller: report the final result if it never went out
    if isinstance(about, WorkToken) and about.seq < int(record.get("seq", 0)):
        return Outcome("stale", job_id, f"token seq {about.seq} is behind the job's seq {record.get('seq')}")
    if isinstance(about, Upload) and (
        "accepted" in record.get("announced", [])
        or int(record.get("seq", 0)) > 0
        or record["status"] == "running"
    ):
        return Outcome("job_started", job_id, "intake had completed; the job's work tokens carry it on")
    if _lease_alive(record, now):
        lease = record["lease"]
        raise RetryLater(f"job {job_id} is leased by {lease.get('owner')} until {lease.get('expires_at')}")
    return None


def process(letter: DeadLetter, deps: Deps) -> Outcome:
    """Handles one dead-lettered message; safe to run any number of times for the same message."""
    about = read_letter(letter, deps.inbox_prefix)
    if isinstance(about, str):
        return Outcome("ignored", None, about)
    job_id = about.job_id
    stage = "intake" if isinstance(about, Upload) else "train"
    for _ in range(CAS_ATTEMPTS):
        loaded = deps.store.read(job_id)
        stamp = now_iso(deps.clock)
        if loaded is None:
            if isinstance(about, WorkToken):
                return Outcome("unknown_job", job_id, "the job has no record (deleted or never made)")
            record = new_failed_record(about, dead_letter_error(letter, about, "intake"), stamp)
            generation = 0
            failed_by_us = True
        else:
            record, generation = loaded
            held = _why_not_fail(record, about, deps.clock())
            if held is not None:
                return held
            failed_by_us = record["status"] not in FINAL_STATUSES
            if failed_by_us:
                record.update(
                    status="failed",
                    error=dead_letter_error(letter, about, str(record.get("stage") or stage)),
                    lease=None,
                    updated_at=stamp,
                )
        if failed_by_us:
            try:
                deps.store.write(job_id, record, if_generation_match=generation)
            except Conflict:
                continue
        return _report_final(record, deps, dead_letter_details(letter) if failed_by_us else None)
    raise Conflict(f"job {job_id}: {CAS_ATTEMPTS} concurrent updates in a row")


def _report_final(record: dict[str, Any], deps: Deps, details: dict[str, Any] | None) -> Outcome:
    """Publishes the job's final result unless the record says it went out, with the service's claim
    protocol (consumer/jobs/results.py): claim on the record, publish, record that it went out. A crash in
    between republishes it, with the same ce-id; a fresh claim of the service's is left to it."""
    job_id = record["job_id"]
    kind: ResultKind = "succeeded" if record["status"] == "succeeded" else "failed"
    claimed = _claim(job_id, kind, deps)
    if claimed != "mine":
        if claimed == "done":
            return Outcome("already_reported", job_id, f"its {kind} result went out before")
        return Outcome("claimed_elsewhere", job_id, f"the service is publishing its {kind} result now")
    loaded = deps.store.read(job_id)
    current = loaded[0] if loaded else record
    data, attributes = result_message(
        kind,
        current,
        project=deps.project,
        extra={"dead_letter": details} if details else None,
        clock=deps.clock,
    )
    deps.results.publish(data, attributes)
    _update(job_id, deps, lambda r: _mark_announced(r, kind, deps))
    return Outcome("reported", job_id, f"published {kind}")


def _claim(job_id: str, kind: ResultKind, deps: Deps) -> str:
    verdict = ["busy"]

    def take(r: dict[str, Any]) -> bool:
        if kind in r.get("announced", []):
            verdict[0] = "done"
            return False
        claimed_at = r.get("announcing", {}).get(kind)
        if claimed_at is not None and deps.clock() - claimed_at < CLAIM_SECONDS:
            verdict[0] = "busy"
            return False
        r["announcing"] = {**r.get("announcing", {}), kind: deps.clock()}
        verdict[0] = "mine"
        return True

    _update(job_id, deps, take)
    return verdict[0]


def _mark_announced(r: dict[str, Any], kind: ResultKind, deps: Deps) -> bool:
    r["announcing"] = {k: v for k, v in r.get("announcing", {}).items() if k != kind}
    if kind not in r.get("announced", []):
        r["announced"] = [*r.get("announced", []), kind]
    r["updated_at"] = now_iso(deps.clock)
    return True


def _update(job_id: str, deps: Deps, change: Callable[[dict[str, Any]], bool]) -> None:
    """Compare-and-swap loop on the job record; `change` edits it in place and says whether to write."""
    for _ in range(CAS_ATTEMPTS):
        loaded = deps.store.read(job_id)
        if loaded is None:
            return
        current, generation = loaded
        if not change(current):
            return
        try:
            deps.store.write(job_id, current, if_generation_match=generation)
            return
        except Conflict:
            continue
    raise Conflict(f"job {job_id}: {CAS_ATTEMPTS} concurrent updates in a row")


# --- Google Cloud adapters ------------------------------------------------------------------------------
class GcsRecordStore:
    """`<STATE_BUCKET>/jobs/<job_id>/job.json` with generation preconditions."""

    def __init__(self, state_url: str, client: Any) -> None:
        bucket, _, prefix = state_url.removeprefix("gs://").partition("/")
        self.bucket = client.bucket(bucket)
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def _name(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{job_id}/job.json"

    def read(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for _ in range(CAS_ATTEMPTS):
            blob = self.bucket.get_blob(self._name(job_id), timeout=CALL_TIMEOUT_S)
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation, timeout=CALL_TIMEOUT_S)
            except (NotFound, PreconditionFailed):
                continue  # replaced or deleted between the two calls
            return json.loads(data), int(blob.generation)
        raise Conflict(f"job {job_id}: the record kept changing while being read")

    def write(self, job_id: str, record: dict[str, Any], *, if_generation_match: int) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(job_id))
        try:
            blob.upload_from_string(
                encode_record(record),
                content_type="application/json",
                if_generation_match=if_generation_match,
                timeout=CALL_TIMEOUT_S,
            )
        except PreconditionFailed as err:
            raise Conflict(str(err)) from err


class PubSubResults:
    """One synchronous, bounded publish per result (the GAPIC client: no background retry threads)."""

    def __init__(self, project: str, topic: str, client: Any) -> None:
        self.topic = topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
        self.client = client

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        from google.pubsub_v1 import PubsubMessage

        message = PubsubMessage(data=data, attributes=dict(attributes))
        response = self.client.publish(topic=self.topic, messages=[message], timeout=CALL_TIMEOUT_S)
        return str(response.message_ids[0])


def storage_client(project: str) -> Any:
    from google.cloud import storage

    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:  # fake-gcs-server in tests
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )
    return storage.Client(project=project)


def publisher_client() -> Any:
    from google.pubsub_v1 import PublisherClient

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:  # the Pub/Sub emulator in tests
        import grpc
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        return PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host)))
    return PublisherClient()


@functools.cache
def deps_from_env() -> Deps:
    """Clients built once per instance, on the first event (never at import)."""
    missing = [
        name for name in ("GOOGLE_CLOUD_PROJECT", "STATE_BUCKET", "RESULTS_TOPIC") if not os.environ.get(name)
    ]
    if missing:
        raise RuntimeError(f"missing environment variables: {', '.join(missing)}")
    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    return Deps(
        store=GcsRecordStore(os.environ["STATE_BUCKET"], storage_client(project)),
        results=PubSubResults(project, os.environ["RESULTS_TOPIC"], publisher_client()),
        project=project,
        inbox_prefix=os.environ.get("INBOX_PREFIX", "datasets/"),
    )


def log(severity: str, message: str, **fields: Any) -> None:
    """One JSON line: Cloud Logging reads `severity` and `message` from it."""
    print(json.dumps({"severity": severity, "message": message, **fields}, default=str), file=sys.stdout)


@functions_framework.cloud_event
def handle(event: Any) -> None:
    """Entry point: a `google.cloud.pubsub.topic.v1.messagePublished` CloudEvent from the dead-letter topic.

    Returns (acks) when the message is handled or cannot be; raises to have it redelivered
    (`RetryLater`, or a transient storage or publish failure).
    """
    try:
        letter = DeadLetter.from_push(event.data or {})
    except (ValueError, TypeError, AttributeError) as err:
        log("ERROR", f"unreadable dead-letter event, dropped: {err}")
        return
    try:
        outcome = process(letter, deps_from_env())
    except RetryLater as err:
        log("WARNING", f"retrying later: {err}", message_id=letter.message_id)
        raise
    severity = "WARNING" if outcome.action == "reported" else "INFO"
    log(
        severity,
        f"dead letter {letter.message_id}: {outcome.action}: {outcome.reason}",
        job_id=outcome.job_id,
        delivery_count=letter.delivery_count,
        source_subscription=letter.source_subscription,
    )
