"""Publishing messages: Pub/Sub (or its emulator) in production, an in-process bus on a laptop.

A topic is a short id (`rvc-work`, resolved in the publisher's project) or a full
`projects/<p>/topics/<id>` path. Attributes are strings, as Pub/Sub requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from rvc_core.errors import ConfigError

if TYPE_CHECKING:
    from consumer.adapters.messaging.local_bus import LocalBus
    from consumer.adapters.messaging.pubsub import PubSubPublisher


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publishes one message and returns its message id once the broker has it. Raises PublishFailed."""
        ...


class PushRequest(NamedTuple):
    """What a push subscription POSTs to an endpoint: headers and the wrapped push envelope as JSON."""

    headers: dict[str, str]
    body: bytes


def check_attributes(attributes: Mapping[str, object]) -> None:
    """Raises TypeError unless every attribute value is a string (Pub/Sub rejects anything else)."""
    bad = [key for key, value in attributes.items() if not isinstance(value, str)]
    if bad:
        raise TypeError(f"Pub/Sub attributes must be strings: {', '.join(sorted(bad))}")


def topic_path(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    return (
        subscription
        if subscription.startswith("projects/")
        else f"projects/{project}/subscriptions/{subscription}"
    )


def open_publisher(kind: str, *, project: str) -> PubSubPublisher | LocalBus:
    """`"pubsub"`: google-cloud-pubsub over gRPC (the emulator when PUBSUB_EMULATOR_HOST is set);
    `"local"`: a new in-process LocalBus."""
    if kind == "pubsub":
        from consumer.adapters.messaging.pubsub import PubSubPublisher

        return PubSubPublisher(project)
    if kind == "local":
        from consumer.adapters.messaging.local_bus import LocalBus

        return LocalBus(project=project)
    raise ConfigError(f"messaging must be 'pubsub' or 'local', got {kind!r}")
