"""Following one job to its end without taking events from anyone else, and without missing any.

The client reads the results topic through a subscription of its own (never the shared one: a
message acked there is gone for its other readers), filtered on the model name (`submit`, created
before the upload, when the job id is not known yet) or on the job id (`watch`), with an
expiration policy of one day as a backstop should the client die before deleting it on exit.
Events of other jobs that reach it (the filter is on the model name, and the emulator ignores
filters) are dropped by job id here.

A subscription only receives messages published after it was created. So: the subscription is
created first, then the job record is read to catch up with what happened before (the record is
also polled now and then: the queue position lives only there, and it is the backstop should a
final event never come). Events are deduplicated by `ce-id` (Pub/Sub delivers at least once).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from consumer.adapters.messaging import subscription_path, topic_path
from consumer.jobs.results import FINAL_KINDS, ReceivedResult, read_result

EXPIRATION_SECONDS = 24 * 3600  # Pub/Sub's minimum TTL for an idle subscription
ACK_DEADLINE_SECONDS = 60
PULL_SECONDS = 10.0  # one pull waits at most this long for messages
RPC_SECONDS = 30.0
FINAL_STATUSES = frozenset({"succeeded", "failed", "superseded", "cancelled"})


def subscription_name(key: str) -> str:
    """`rvc-trainer-follow-<key>-<random>`: valid for Pub/Sub (letters first, 3-255 characters)."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", key)[:40]
    return f"rvc-trainer-follow-{slug}-{uuid.uuid4().hex[:8]}"


def attribute_filter(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'attributes.{name} = "{escaped}"'


class Subscription:
    """A pull subscription of this client's own on the results topic; deleted by `close`."""

    def __init__(self, client: Any, project: str, topic: str, *, on: str, value: str) -> None:
        self.client = client
        self.topic = topic_path(project, topic)
        self.path = subscription_path(project, subscription_name(value))
        self.filter = attribute_filter(on, value)
        self.created = False

    def create(self) -> Subscription:
        from google.protobuf import duration_pb2
        from google.pubsub_v1 import ExpirationPolicy
        from google.pubsub_v1 import Subscription as Sub

        self.client.create_subscription(
            request=Sub(
                name=self.path,
                topic=self.topic,
                filter=self.filter,
                ack_deadline_seconds=ACK_DEADLINE_SECONDS,
                expiration_policy=ExpirationPolicy(ttl=duration_pb2.Duration(seconds=EXPIRATION_SECONDS)),
            ),
            timeout=RPC_SECONDS,
        )
        self.created = True
        return self

    def pull(self, timeout: float = PULL_SECONDS) -> list[ReceivedResult]:
        """What arrives within `timeout` seconds, acknowledged (all of it: the subscription is ours)."""
        from google.api_core.exceptions import DeadlineExceeded, ServiceUnavailable

        try:
            response = self.client.pull(subscription=self.path, max_messages=100, timeout=timeout, retry=None)
        except DeadlineExceeded:
            return []
        except ServiceUnavailable:
            time.sleep(1.0)
            return []
        received = list(response.received_messages)
        if received:
            self.client.acknowledge(
                subscription=self.path, ack_ids=[m.ack_id for m in received], timeout=RPC_SECONDS
            )
        received.sort(key=lambda m: m.message.publish_time)
        results = []
        for m in received:
            with contextlib.suppress(ValueError):  # not a training result
                results.append(read_result(m.message.data, dict(m.message.attributes)))
        return results

    def close(self) -> None:
        if not self.created:
            return
        from google.api_core.exceptions import GoogleAPICallError

        with contextlib.suppress(GoogleAPICallError):  # the expiration policy removes it otherwise
            self.client.delete_subscription(subscription=self.path, timeout=RPC_SECONDS)
        self.created = False
        with contextlib.suppress(Exception):
            self.client.transport.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Outcome:
    status: str  # succeeded, failed or superseded
    error: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)


FINAL_EVENT_GRACE_SECONDS = 10.0  # how long a final record waits for its final event


class Watcher:
    """Follows `job_id` on `subscription`, catching up from `read_record` (None: no record yet)."""

    def __init__(
        self,
        job_id: str,
        subscription: Subscription,
        read_record: Callable[[], dict[str, Any] | None],
        *,
        on_record: Callable[[dict[str, Any]], None],
        on_event: Callable[[ReceivedResult], None],
        poll_seconds: float = 30.0,
        queued_poll_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.subscription = subscription
        self.read_record = read_record
        self.on_record = on_record
        self.on_event = on_event
        self.poll_seconds = poll_seconds
        self.queued_poll_seconds = queued_poll_seconds
        self.clock = clock
        self.seen: set[str] = set()
        self.record: dict[str, Any] | None = None

    def run(self, stopped: Callable[[], bool] = lambda: False) -> Outcome | None:
        """Follows until the job ends; None when `stopped()` says so first (checked after each pull)."""
        outcome = self._poll()
        next_poll = self.clock() + self._poll_interval()
        while outcome is None:
            wait = max(0.5, min(PULL_SECONDS, next_poll - self.clock()))
            for result in self._events(wait):
                self.on_event(result)
                if result.kind in FINAL_KINDS:
                    return self._final(result)
            if stopped():
                return None
            if self.clock() >= next_poll:
                outcome = self._poll()
                next_poll = self.clock() + self._poll_interval()
                if outcome is not None:
                    self._drain_final()
        return outcome

    def _drain_final(self) -> None:
        """The record said the job ended before its final event arrived: wait a little for the
        event, so a follower that prints events (`--json`) prints the final one too."""
        until = self.clock() + FINAL_EVENT_GRACE_SECONDS
        while (left := until - self.clock()) > 0:
            for result in self._events(min(1.0, left)):
                self.on_event(result)
                if result.kind in FINAL_KINDS:
                    return

    def _events(self, wait: float) -> Iterator[ReceivedResult]:
        for result in self.subscription.pull(wait):
            job = result.attributes.get("job_id") or result.data.get("job_id")
            if job != self.job_id or (result.id and result.id in self.seen):
                continue
            self.seen.add(result.id)
            yield result

    def _poll_interval(self) -> float:
        queued = self.record is None or self.record.get("status") == "queued"
        return self.queued_poll_seconds if queued else self.poll_seconds

    def _poll(self) -> Outcome | None:
        record = self.read_record()
        if record is None:
            return None  # intake has not made the record yet: events will tell
        self.record = record
        self.on_record(record)
        if record.get("status") in FINAL_STATUSES:
            return Outcome(str(record["status"]), record.get("error"), dict(record.get("artifacts") or {}))
        return None

    def _final(self, result: ReceivedResult) -> Outcome:
        data = result.data
        status = "succeeded" if result.kind == "succeeded" else str(data.get("status") or "failed")
        artifacts = dict(data.get("artifacts") or {})
        if result.kind == "succeeded" and data.get("truncated"):
            record = self.read_record() or {}
            artifacts = dict(record.get("artifacts") or artifacts)
        return Outcome(status, data.get("error"), artifacts)
