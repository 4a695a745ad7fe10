"""The dead-letter function: an upload notification that exhausted its deliveries becomes one `failed` result.

Pub/Sub moves an intake notification to the dead-letter topic after `max_delivery_attempts` failed
pushes to the intake endpoint; Eventarc hands each such message to `handle`. Work never comes here
(it goes through a Cloud Tasks queue that retries without limit), so a dead-lettered work token, left
over from the Pub/Sub work topic of old, is ignored with a log line. For the upload's job:

- not a training upload (the upload filters) → nothing;
- the job already has a final status → its final result is published if it never went out, else
  nothing happens (exactly one final result per job); a fresh claim of another publisher on it →
  `RetryLater`;
- the job exists and intake had finished with it (it is queued, running or has moved on) → nothing:
  a healthy job is never touched;
- intake is announcing the job right now (a fresh claim) → `RetryLater`, and Eventarc redelivers;
- otherwise the record is marked failed (`dead_lettered`, by compare-and-swap) and one `failed`
  result, carrying the delivery count and the original attributes, is published. An upload that never
  made a record gets a failed record, so `GET /jobs/<id>` explains it too.

The job protocol (record, compare-and-swap, publish-once claim, result message, job id, upload
filters, model-name rule) is `consumer.jobs`, shipped inside this function's archive (the file list is
functions/dead_letter/ARCHIVE); this module holds only the delivery parsing, the decision and two
small Google Cloud adapters.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import functions_framework

from consumer.errors import NotFound, PreconditionFailed
from consumer.jobs.records import JobRecord, JobRecords, SourceObject, job_id_for, source_key
from consumer.jobs.results import CLAIM_SECONDS, ResultKind, Results, final_kind, publish_once
from consumer.jobs.uploads import model_name_hint, why_not_an_upload

# Attributes Pub/Sub adds to a dead-lettered message (everything else is the original's).
DEAD_LETTER_ATTRIBUTE_PREFIX = "CloudPubSubDeadLetter"
DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_SUBSCRIPTION_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"

ERROR_CODE = "dead_lettered"
CALL_TIMEOUT_S = 30.0
READ_ATTEMPTS = 20

Action = Literal["reported", "already_reported", "job_healthy", "ignored"]


class RetryLater(Exception):
    """Another publisher (intake, a slice) holds a fresh claim on the job's announcement: decide once
    it has finished or its claim has expired (Eventarc redelivers)."""


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

    @property
    def details(self) -> dict[str, Any]:
        """What the `failed` result says about the delivery (`dead_letter` in its data)."""
        return {
            "delivery_count": self.delivery_count,
            "source_subscription": self.source_subscription,
            "message_id": self.message_id,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class Upload:
    bucket: str
    name: str
    generation: int
    metadata: dict[str, str]  # custom metadata, when the notification carried the object

    @property
    def job_id(self) -> str:
        return job_id_for(source_key(self.bucket, self.name, self.generation))


def read_letter(letter: DeadLetter, *, inbox_prefix: str, own_buckets: tuple[str, ...] = ()) -> Upload | str:
    """The upload a dead-lettered notification was about, or why it was about none."""
    attributes = letter.attributes
    if "bucketId" not in attributes or "objectId" not in attributes:
        if _is_work_token(letter.data):
            return "a work token from the retired Pub/Sub work topic (work goes through Cloud Tasks now)"
        return "not a storage notification"
    bucket, name = attributes["bucketId"], attributes["objectId"]
    event_type = attributes.get("eventType", "OBJECT_FINALIZE")
    # The service answers these 2xx and ignores them; dead-lettered only while it was unreachable.
    if event_type != "OBJECT_FINALIZE":
        return f"{event_type} is not an upload"
    why_not = why_not_an_upload(bucket, name, inbox_prefix=inbox_prefix, own_buckets=own_buckets)
    if why_not is not None:
        return f"{bucket}/{name}: {why_not}"
    resource = _json_object(letter.data)
    try:
        generation = int(str(attributes.get("objectGeneration") or resource.get("generation")))
    except ValueError:
        return f"{bucket}/{name}: no object generation in the notification"
    metadata = resource.get("metadata") if isinstance(resource.get("metadata"), dict) else {}
    return Upload(bucket, name, generation, {str(k): str(v) for k, v in metadata.items()})


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _is_work_token(data: bytes) -> bool:
    raw = _json_object(data)
    return isinstance(raw.get("job_id"), str) and type(raw.get("seq")) is int


# --- the decision -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    action: Action
    job_id: str | None
    reason: str


@dataclass(frozen=True)
class Deps:
    records: JobRecords
    results: Results
    inbox_prefix: str = "datasets/"
    own_buckets: tuple[str, ...] = ()  # the service's state and models buckets: never uploads
    clock: Callable[[], float] = time.time


def dead_letter_error(letter: DeadLetter) -> dict[str, Any]:
    attempts = (
        f"{letter.delivery_count} delivery attempts" if letter.delivery_count else "every delivery attempt"
    )
    return {
        "stage": "intake",
        "code": ERROR_CODE,
        "message": (
            f"the service failed {attempts} of this upload's notification "
            f"({letter.source_subscription or 'unknown subscription'}); upload the dataset again to retry"
        ),
        "retryable": True,
    }


def failed_record(upload: Upload, error: dict[str, Any], now: float) -> JobRecord:
    """The record of an upload whose intake died before making one; it carries the claim to announce."""
    return JobRecord(
        job_id=upload.job_id,
        model_name=model_name_hint(upload.metadata, upload.name),
        source=SourceObject(
            uri=f"gs://{upload.bucket}/{upload.name}",
            bucket=upload.bucket,
            name=upload.name,
            generation=upload.generation,
        ),
        spec={},
        status="failed",
        stage="intake",
        error=error,
        announcing={"failed": now},
    )


def healthy(record: JobRecord) -> str | None:
    """Why intake had finished with this job, which must therefore be left alone; None if it had not."""
    if record.status == "running":
        return "the job is running"
    if record.seq > 0:
        return f"the job has moved on to work token {record.seq}"
    if "accepted" in record.announced:
        return "intake had queued the job; the work queue carries it on"
    return None


def process(letter: DeadLetter, deps: Deps) -> Outcome:
    """Handles one dead-lettered message; safe to run any number of times for the same message."""
    about = read_letter(letter, inbox_prefix=deps.inbox_prefix, own_buckets=deps.own_buckets)
    if isinstance(about, str):
        return Outcome("ignored", None, about)
    job_id = about.job_id
    error = dead_letter_error(letter)
    record = deps.records.get(job_id)
    if record is None:
        record, created = deps.records.create(failed_record(about, error, deps.clock()))
        if created:
            return _report_failure(record, letter, deps)
    if record.is_final:
        return _report_final(record, deps)

    verdict: list[str] = [""]

    def fail(r: JobRecord) -> bool:
        verdict[0] = ""
        if r.is_final:
            verdict[0] = "final"
            return False
        why = healthy(r)
        if why is not None:
            verdict[0] = why
            return False
        claimed_at = r.announcing.get("accepted")
        if claimed_at is not None and deps.clock() - claimed_at < CLAIM_SECONDS:
            verdict[0] = "busy"
            return False
        r.status, r.error, r.lease = "failed", error, None
        r.announcing["failed"] = deps.clock()  # the claim to publish, written with the change
        return True

    record = deps.records.update(job_id, fail)
    if verdict[0] == "final":
        return _report_final(record, deps)
    if verdict[0] == "busy":
        raise RetryLater(f"job {job_id}: intake is announcing it right now")
    if verdict[0]:
        return Outcome("job_healthy", job_id, verdict[0])
    return _report_failure(record, letter, deps)


def _report_failure(record: JobRecord, letter: DeadLetter, deps: Deps) -> Outcome:
    """Publishes the `failed` result of a job this function failed (its claim is on the record)."""
    results = ResultsWithExtra(deps.results, {"dead_letter": letter.details})
    publish_once(results, deps.records, record, "failed", claimed=True)
    return Outcome("reported", record.job_id, "marked failed and published failed")


def _report_final(record: JobRecord, deps: Deps) -> Outcome:
    """Publishes a finished job's final result, as the service would, unless it went out already."""
    kind: ResultKind = final_kind(record)
    if kind in record.announced:
        return Outcome("already_reported", record.job_id, f"its {kind} result went out before")
    if publish_once(deps.results, deps.records, record, kind) is None:
        # A live publisher claimed it moments ago, or one died holding the claim: once the claim has
        # expired, the redelivery finds the result sent, or takes the claim over and sends it.
        raise RetryLater(f"job {record.job_id}: its {kind} result is claimed by another publisher")
    return Outcome("reported", record.job_id, f"published {kind}")


class ResultsWithExtra(Results):
    """Results whose data also carries `extra` (here: the dead letter's details)."""

    def __init__(self, results: Results, extra: Mapping[str, Any]) -> None:
        super().__init__(results.publisher, results.topic, project=results.project)
        self.extra = dict(extra)

    def publish(
        self,
        kind: ResultKind,
        record: JobRecord,
        *,
        extra: Mapping[str, Any] | None = None,
        extra_id: str = "",
    ) -> str:
        return super().publish(kind, record, extra={**self.extra, **(extra or {})}, extra_id=extra_id)


# --- Google Cloud adapters ------------------------------------------------------------------------------
@dataclass
class GcsRecordStore:
    """The part of consumer's ObjectStore that JobRecords uses, on Cloud Storage: `gs://bucket/name`
    objects read with their generation and written with `ifGenerationMatch`."""

    client: Any
    _buckets: dict[str, Any] = field(default_factory=dict)

    def _blob_parts(self, uri: str) -> tuple[Any, str]:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not name:
            raise ValueError(f"not a gs:// object URI: {uri}")
        if bucket not in self._buckets:
            self._buckets[bucket] = self.client.bucket(bucket)
        return self._buckets[bucket], name

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        from google.api_core import exceptions

        bucket, name = self._blob_parts(uri)
        for _ in range(READ_ATTEMPTS):
            blob = bucket.get_blob(name, timeout=CALL_TIMEOUT_S)
            if blob is None:
                raise NotFound(f"{uri} does not exist")
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation, timeout=CALL_TIMEOUT_S)
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue  # replaced or deleted between the two calls
            return data, int(blob.generation)
        raise PreconditionFailed(f"{uri} kept changing while being read")

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        from google.api_core import exceptions

        bucket, name = self._blob_parts(uri)
        blob = bucket.blob(name)
        if metadata:
            blob.metadata = metadata
        try:
            blob.upload_from_string(
                data,
                content_type=content_type or "application/octet-stream",
                if_generation_match=if_generation_match,
                timeout=CALL_TIMEOUT_S,
            )
        except exceptions.PreconditionFailed as err:
            raise PreconditionFailed(f"{uri}: generation is not {if_generation_match}") from err
        return int(blob.generation or 0)


class PubSubPublisher:
    """consumer's Publisher, as one synchronous, bounded publish (the GAPIC client: no background
    retry threads)."""

    def __init__(self, project: str, client: Any) -> None:
        self.project = project
        self.client = client

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        from google.pubsub_v1 import PubsubMessage

        path = topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"
        message = PubsubMessage(data=data, attributes=dict(attributes))
        response = self.client.publish(topic=path, messages=[message], timeout=CALL_TIMEOUT_S)
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
    state_url = os.environ["STATE_BUCKET"]
    return Deps(
        records=JobRecords(GcsRecordStore(storage_client(project)), state_url),  # type: ignore[arg-type]
        results=Results(
            PubSubPublisher(project, publisher_client()), os.environ["RESULTS_TOPIC"], project=project
        ),
        inbox_prefix=os.environ.get("INBOX_PREFIX", "datasets/"),
        own_buckets=tuple(url for url in (state_url, os.environ.get("MODELS_BUCKET", "")) if url),
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
