"""Creating topics and subscriptions, and pulling: for the local dev stack, tests and benchmarks.

Production wiring is Terraform's job; this mirrors it on the Pub/Sub emulator. Every call is
bounded by `timeout` seconds; "already exists" counts as success, so setup can be re-run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from consumer.adapters.messaging import subscription_path, topic_path


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int  # 0 when the subscription has no dead-letter policy


@dataclass(frozen=True)
class SubscriptionSpec:
    name: str
    topic: str
    push_endpoint: str | None = None  # None: a pull subscription
    ack_deadline_seconds: int = 600
    min_backoff_seconds: float | None = None  # None: redeliver immediately (Pub/Sub's default)
    max_backoff_seconds: float | None = None
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5  # with a dead-letter topic only (5-100)
    unwrapped: bool = False  # push the raw data with attributes as headers (no_wrapper, write_metadata)
    filter: str = ""  # a Pub/Sub subscription filter, e.g. 'attributes.bucketId = "inbox"'


def _client_kwargs(emulator_host: str | None) -> dict[str, Any]:
    host = emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return {}
    import grpc

    return {"channel": grpc.insecure_channel(host)}


def publisher_admin(emulator_host: str | None = None) -> Any:
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    kwargs = _client_kwargs(emulator_host)
    return PublisherClient(transport=PublisherGrpcTransport(**kwargs)) if kwargs else PublisherClient()


def subscriber_admin(emulator_host: str | None = None) -> Any:
    from google.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    kwargs = _client_kwargs(emulator_host)
    return SubscriberClient(transport=SubscriberGrpcTransport(**kwargs)) if kwargs else SubscriberClient()


def ensure_topic(project: str, topic: str, *, emulator_host: str | None = None, timeout: float = 10.0) -> str:
    from google.api_core.exceptions import AlreadyExists

    path = topic_path(project, topic)
    client = publisher_admin(emulator_host)
    try:
        client.create_topic(name=path, timeout=timeout, retry=None)
    except AlreadyExists:
        pass
    finally:
        client.transport.close()
    return path


def ensure_subscription(
    project: str, spec: SubscriptionSpec, *, emulator_host: str | None = None, timeout: float = 10.0
) -> str:
    from google.api_core.exceptions import AlreadyExists
    from google.protobuf import duration_pb2
    from google.pubsub_v1 import DeadLetterPolicy, PushConfig, RetryPolicy, Subscription

    path = subscription_path(project, spec.name)
    fields: dict[str, Any] = {
        "name": path,
        "topic": topic_path(project, spec.topic),
        "ack_deadline_seconds": spec.ack_deadline_seconds,
        "filter": spec.filter,
    }
    if spec.push_endpoint:
        push: dict[str, Any] = {"push_endpoint": spec.push_endpoint}
        if spec.unwrapped:
            push["no_wrapper"] = PushConfig.NoWrapper(write_metadata=True)
        fields["push_config"] = PushConfig(**push)
    if spec.min_backoff_seconds is not None or spec.max_backoff_seconds is not None:
        fields["retry_policy"] = RetryPolicy(
            minimum_backoff=duration_pb2.Duration(seconds=int(spec.min_backoff_seconds or 10)),
            maximum_backoff=duration_pb2.Duration(seconds=int(spec.max_backoff_seconds or 600)),
        )
    if spec.dead_letter_topic:
        fields["dead_letter_policy"] = DeadLetterPolicy(
            dead_letter_topic=topic_path(project, spec.dead_letter_topic),
            max_delivery_attempts=spec.max_delivery_attempts,
        )
    client = subscriber_admin(emulator_host)
    try:
        client.create_subscription(request=Subscription(**fields), timeout=timeout, retry=None)
    except AlreadyExists:
        pass
    finally:
        client.transport.close()
    return path


def pull(
    project: str,
    subscription: str,
    *,
    max_messages: int = 100,
    timeout: float = 5.0,
    ack: bool = True,
    emulator_host: str | None = None,
) -> list[ReceivedMessage]:
    """One pull (what is available within `timeout` seconds), acknowledged unless `ack=False`."""
    from google.api_core.exceptions import DeadlineExceeded

    path = subscription_path(project, subscription)
    client = subscriber_admin(emulator_host)
    try:
        try:
            response = client.pull(subscription=path, max_messages=max_messages, timeout=timeout, retry=None)
        except DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if ack and received:
            client.acknowledge(subscription=path, ack_ids=[m.ack_id for m in received], timeout=timeout)
    finally:
        client.transport.close()
    return [
        ReceivedMessage(
            message_id=m.message.message_id,
            data=bytes(m.message.data),
            attributes=dict(m.message.attributes),
            delivery_attempt=m.delivery_attempt,
        )
        for m in received
    ]
