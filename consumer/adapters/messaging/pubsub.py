"""Publishing to Pub/Sub with google-cloud-pubsub's gRPC client, one synchronous call per message.

Why not the batching `pubsub_v1.PublisherClient`: it retries failed publishes for minutes in a
background thread, and after one failed batch (with one-message batches) 2.33 answers every later
publish with an AssertionError. We publish one message at a time on the request path (the next work
token must be out before the ack), so the plain GAPIC `publish` call, bounded by a timeout and
retried by `consumer.adapters.retry`, is both simpler and predictable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from consumer.adapters.messaging import check_attributes, topic_path
from consumer.adapters.retry import PUBLISH_POLICY, RetryPolicy, call_with_retry, is_transient
from consumer.errors import PublishFailed

# gRPC's reconnect backoff grows to 120 s by default: after a short outage the channel would keep
# refusing calls long after the server is back. Cap it well below our publish deadline.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def default_client(emulator_host: str | None = None) -> Any:
    """A GAPIC publisher: plain-text gRPC to the emulator when PUBSUB_EMULATOR_HOST (or
    `emulator_host`) is set, the real service with default credentials otherwise."""
    import grpc
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    host = emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        channel = grpc.insecure_channel(host, options=_CHANNEL_OPTIONS)
        return PublisherClient(transport=PublisherGrpcTransport(channel=channel))

    def secure_channel(*args: Any, options: Any = (), **kwargs: Any) -> Any:
        # the transport's own channel (credentials, TLS, its options) plus our reconnect bounds
        return PublisherGrpcTransport.create_channel(*args, options=[*options, *_CHANNEL_OPTIONS], **kwargs)

    return PublisherClient(transport=PublisherGrpcTransport(channel=secure_channel))


class PubSubPublisher:
    def __init__(
        self,
        project: str,
        *,
        client_factory: Callable[[], Any] | None = None,
        policy: RetryPolicy = PUBLISH_POLICY,
    ) -> None:
        self.project = project
        self.policy = policy
        self._client_factory = client_factory or default_client
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        from google.pubsub_v1 import PubsubMessage

        path = topic_path(self.project, topic)
        check_attributes(attributes)
        message = PubsubMessage(data=data, attributes=dict(attributes))

        def once(timeout: float) -> str:
            response = self.client.publish(topic=path, messages=[message], timeout=timeout, retry=None)
            return response.message_ids[0]

        try:
            return call_with_retry(once, self.policy, what=f"publish to {path}")
        except Exception as exc:
            retryable = is_transient(exc)
            reason = "kept failing" if retryable else "failed"
            raise PublishFailed(f"publish to {path} {reason}: {exc}", retryable=retryable) from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.transport.close()
                self._client = None
