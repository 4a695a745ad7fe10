"""Every way an upload notification reaches `POST /events`, turned into one typed `ObjectFinalized`
(or an `Ignored` saying why it is not one). Handlers never look at raw envelopes.

Shapes (shared/spec/EVENTS.md §1–2): Eventarc CloudEvents in binary or structured mode whose data is
the object resource; a Pub/Sub push (wrapped, or unwrapped with attributes as headers) of a Cloud
Storage notification; an Eventarc `messagePublished` CloudEvent wrapping such a push envelope; and the
legacy background-function shape `{"context": …, "data": …}`. Payload format NONE carries no object
resource: `metadata` is then None and intake reads it from storage.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from consumer.jobs.records import source_key

EventKind = Literal["finalized", "deleted", "archived", "metadata_updated"]

# Every event type name we know, from each delivery family, → one kind. Only "finalized" starts a job.
EVENT_KINDS: dict[str, EventKind] = {
    # Eventarc / CloudEvents (google-cloudevents)
    "google.cloud.storage.object.v1.finalized": "finalized",
    "google.cloud.storage.object.v1.deleted": "deleted",
    "google.cloud.storage.object.v1.archived": "archived",
    "google.cloud.storage.object.v1.metadataUpdated": "metadata_updated",
    # Cloud Storage notifications (the `eventType` attribute)
    "OBJECT_FINALIZE": "finalized",
    "OBJECT_DELETE": "deleted",
    "OBJECT_ARCHIVE": "archived",
    "OBJECT_METADATA_UPDATE": "metadata_updated",
    # Legacy background functions
    "google.storage.object.finalize": "finalized",
    "google.storage.object.delete": "deleted",
    "google.storage.object.archive": "archived",
    "google.storage.object.metadataUpdate": "metadata_updated",
}

# CloudEvent types whose data is a Pub/Sub push envelope rather than an object resource.
PUBSUB_ENVELOPE_TYPES: frozenset[str] = frozenset(
    {"google.cloud.pubsub.topic.v1.messagePublished", "google.pubsub.topic.publish"}
)

# Notification attributes (as headers of an unwrapped push they arrive lower-cased) → canonical names.
NOTIFICATION_ATTRIBUTES: dict[str, str] = {
    "eventtype": "eventType",
    "bucketid": "bucketId",
    "objectid": "objectId",
    "objectgeneration": "objectGeneration",
    "payloadformat": "payloadFormat",
    "eventtime": "eventTime",
    "notificationconfig": "notificationConfig",
    "overwrotegeneration": "overwroteGeneration",
}

Delivery = Literal[
    "cloudevent-binary",
    "cloudevent-structured",
    "pubsub-push",
    "pubsub-push-unwrapped",
    "cloudevent-messagepublished",
    "background-function",
]


@dataclass(frozen=True)
class ObjectFinalized:
    """A new object generation in a bucket: the only event that starts a job."""

    bucket: str
    name: str
    generation: int
    metadata: dict[str, str] | None  # custom metadata; None when the delivery carried no object resource
    size: int | None = None  # bytes
    content_type: str | None = None
    event_id: str | None = None
    event_time: str | None = None
    delivery: Delivery = "pubsub-push"

    @property
    def source_key(self) -> str:
        """`bucket/object#generation`: the identity of one upload."""
        return source_key(self.bucket, self.name, self.generation)


@dataclass(frozen=True)
class Ignored:
    """Not a training upload. `malformed` marks bodies we could not read at all (counted, logged)."""

    reason: str
    malformed: bool = False


class Malformed(ValueError):
    pass


def parse_delivery(headers: Mapping[str, str], body: bytes) -> ObjectFinalized | Ignored:
    """Any delivery of EVENTS.md §1–2 → `ObjectFinalized` or `Ignored(reason)`. Never raises."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return _parse(lowered, body)
    except Malformed as err:
        return Ignored(str(err), malformed=True)


def _parse(headers: dict[str, str], body: bytes) -> ObjectFinalized | Ignored:
    structured = headers.get("content-type", "").startswith("application/cloudevents")
    if "ce-specversion" in headers or structured:
        return _from_cloudevent(
            _cloudevent(headers, body), "cloudevent-structured" if structured else "cloudevent-binary"
        )
    payload = _json_or_none(body)
    if isinstance(payload, dict) and isinstance(payload.get("message"), dict):
        return _from_pubsub_message(payload["message"], "pubsub-push")
    attributes = {NOTIFICATION_ATTRIBUTES[k]: v for k, v in headers.items() if k in NOTIFICATION_ATTRIBUTES}
    if "eventType" in attributes:
        message_id = headers.get("x-goog-pubsub-message-id")
        return _from_notification(attributes, payload, message_id, "pubsub-push-unwrapped")
    if isinstance(payload, dict) and isinstance(payload.get("context"), dict) and "data" in payload:
        return _from_background_function(payload)
    if isinstance(payload, dict) and payload.get("specversion"):
        # A structured CloudEvent sent with a plain JSON content type.
        structured_headers = {**headers, "content-type": "application/cloudevents+json"}
        return _from_cloudevent(_cloudevent(structured_headers, body), "cloudevent-structured")
    raise Malformed(
        "unrecognised delivery: neither a CloudEvent nor a Pub/Sub push of a storage notification"
    )


# --- CloudEvents --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Event:
    type: str
    id: str | None
    time: str | None
    subject: str | None
    source: str | None
    extensions: dict[str, str]
    data: Any


def _cloudevent(headers: dict[str, str], body: bytes) -> _Event:
    """Binary or structured mode, read by the CloudEvents SDK (data stays raw; we decode it)."""
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    try:
        event = from_http(headers, body, data_unmarshaller=lambda raw: raw)
    except GenericException as err:
        raise Malformed(f"not a valid CloudEvent: {err}") from None
    attributes = {k: str(v) for k, v in event.get_attributes().items()}
    data = event.get_data()
    if isinstance(data, str | bytes):
        data = _json_or_none(data)
    return _Event(
        type=attributes.get("type", ""),
        id=attributes.get("id"),
        time=attributes.get("time"),
        subject=attributes.get("subject"),
        source=attributes.get("source"),
        extensions=attributes,
        data=data,
    )


def _from_cloudevent(event: _Event, delivery: Delivery) -> ObjectFinalized | Ignored:
    if event.type in PUBSUB_ENVELOPE_TYPES:
        if not isinstance(event.data, dict) or not isinstance(event.data.get("message"), dict):
            raise Malformed(f"{event.type} without a Pub/Sub message in its data")
        return _from_pubsub_message(event.data["message"], "cloudevent-messagepublished")
    kind = EVENT_KINDS.get(event.type)
    if kind is None:
        return Ignored(f"event type {event.type} is not a storage event")
    if kind != "finalized":
        return Ignored(f"event type {event.type} is not an object finalize")
    resource = event.data if isinstance(event.data, dict) else {}
    bucket = resource.get("bucket") or event.extensions.get("bucket") or _bucket_from_source(event.source)
    name = resource.get("name") or _name_from_subject(event.subject)
    return _finalized(
        bucket,
        name,
        resource.get("generation"),
        resource,
        event.id,
        event.time,
        delivery,
        has_resource=bool(resource),
    )


def _bucket_from_source(source: str | None) -> str | None:
    # //storage.googleapis.com/projects/_/buckets/inbox
    if source and "/buckets/" in source:
        return source.rsplit("/buckets/", 1)[1].split("/", 1)[0]
    return None


def _name_from_subject(subject: str | None) -> str | None:
    if subject and subject.startswith("objects/"):
        return subject[len("objects/") :]
    return None


# --- Pub/Sub notifications ----------------------------------------------------------------------
def _from_pubsub_message(message: dict[str, Any], delivery: Delivery) -> ObjectFinalized | Ignored:
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise Malformed("Pub/Sub message attributes are not an object")
    raw_data = message.get("data")
    payload = _json_or_none(_b64(raw_data)) if raw_data else None
    message_id = message.get("messageId") or message.get("message_id")
    return _from_notification({str(k): str(v) for k, v in attributes.items()}, payload, message_id, delivery)


def _from_notification(
    attributes: dict[str, str], payload: Any, message_id: str | None, delivery: Delivery
) -> ObjectFinalized | Ignored:
    event_type = attributes.get("eventType")
    if not event_type:
        return Ignored("Pub/Sub message without an eventType attribute: not a storage notification")
    kind = EVENT_KINDS.get(event_type)
    if kind != "finalized":
        return Ignored(f"notification {event_type} is not an object finalize")
    resource = payload if isinstance(payload, dict) else {}
    if attributes.get("payloadFormat", "JSON_API_V1") == "JSON_API_V1" and not resource:
        raise Malformed("JSON_API_V1 notification without an object resource in its data")
    return _finalized(
        attributes.get("bucketId") or resource.get("bucket"),
        attributes.get("objectId") or resource.get("name"),
        attributes.get("objectGeneration") or resource.get("generation"),
        resource,
        message_id,
        attributes.get("eventTime"),
        delivery,
        has_resource=bool(resource),
    )


def _from_background_function(payload: dict[str, Any]) -> ObjectFinalized | Ignored:
    context = payload["context"]
    event_type = str(context.get("eventType", ""))
    kind = EVENT_KINDS.get(event_type)
    if kind != "finalized":
        return Ignored(f"event type {event_type or '(none)'} is not an object finalize")
    resource = payload["data"] if isinstance(payload["data"], dict) else {}
    return _finalized(
        resource.get("bucket"),
        resource.get("name"),
        resource.get("generation"),
        resource,
        _opt_str(context.get("eventId")),
        _opt_str(context.get("timestamp")),
        "background-function",
        has_resource=bool(resource),
    )


# --- the object resource ------------------------------------------------------------------------
def _finalized(
    bucket: Any,
    name: Any,
    generation: Any,
    resource: dict[str, Any],
    event_id: str | None,
    event_time: str | None,
    delivery: Delivery,
    *,
    has_resource: bool,
) -> ObjectFinalized:
    if not bucket or not name:
        raise Malformed("finalize event without a bucket and object name")
    metadata: dict[str, str] | None = None
    if has_resource:
        raw_metadata = resource.get("metadata") or {}
        if not isinstance(raw_metadata, dict):
            raise Malformed("object metadata is not an object")
        metadata = {str(k): str(v) for k, v in raw_metadata.items()}
    return ObjectFinalized(
        bucket=str(bucket),
        name=str(name),
        generation=_int64(generation, "generation"),
        metadata=metadata,
        size=_int64(resource["size"], "size") if resource.get("size") is not None else None,
        content_type=_opt_str(resource.get("contentType")),
        event_id=_opt_str(event_id),
        event_time=_opt_str(event_time),
        delivery=delivery,
    )


def _int64(value: Any, what: str) -> int:
    # JSON API int64 fields arrive as strings; some producers send numbers.
    if isinstance(value, bool) or value is None:
        raise Malformed(f"object {what} missing")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Malformed(f"object {what} {value!r} is not an integer") from None
    if number < 0:
        raise Malformed(f"object {what} {value!r} is negative")
    return number


def _json_or_none(raw: bytes | str) -> Any:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("body is not UTF-8") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise Malformed(f"body is not JSON ({err.msg} at {err.pos})") from None


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise Malformed("message data is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("message data is not valid base64") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
