"""An in-process stand-in for Pub/Sub push subscriptions, for laptops and unit tests.

It keeps Pub/Sub's contract where the service can notice it: each subscription gets its own copy
of every message published after it was made (a topic without subscriptions drops messages); a
handler receives the wrapped push envelope (EVENTS.md §2) and answers an HTTP status; only 102,
200, 201, 202 and 204 ack; anything else, an exception included, is redelivered after an
exponential backoff, and after `max_attempts` the message goes to `dead_letters`. Deliveries run one
at a time, in the thread that calls `run_until_idle` (or the background thread of `start`).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumer.adapters.messaging import PushRequest, check_attributes, subscription_path, topic_path

log = logging.getLogger(__name__)

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
PushHandler = Callable[[PushRequest], int]


@dataclass(frozen=True)
class LocalMessage:
    message_id: str
    topic: str  # full path
    data: bytes
    attributes: dict[str, str]
    publish_time: str  # RFC 3339, UTC


@dataclass(frozen=True)
class DeadLetter:
    subscription: str  # full path
    message: LocalMessage
    attempts: int
    last_status: int  # HTTP status of the last try (500 when the handler raised)


@dataclass(order=True)
class _Delivery:
    due: float  # clock() value
    order: int
    subscription: str = field(compare=False)
    message: LocalMessage = field(compare=False)
    attempt: int = field(compare=False, default=1)


@dataclass
class _Subscription:
    path: str
    topic: str
    handler: PushHandler


def push_request(message: LocalMessage, subscription: str, attempt: int) -> PushRequest:
    """The wrapped push envelope Pub/Sub POSTs, with the delivery attempt (we dead-letter)."""
    envelope = {
        "message": {
            "data": base64.b64encode(message.data).decode("ascii"),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "message_id": message.message_id,
            "publishTime": message.publish_time,
            "publish_time": message.publish_time,
        },
        "subscription": subscription,
        "deliveryAttempt": attempt,
    }
    headers = {"Content-Type": "application/json", "User-Agent": "rvc-local-bus"}
    return PushRequest(headers=headers, body=json.dumps(envelope).encode("utf-8"))


class LocalBus:
    def __init__(
        self,
        *,
        project: str = "local",
        max_attempts: int = 5,
        min_backoff: float = 0.1,  # seconds before the first redelivery; doubles each time
        max_backoff: float = 10.0,  # seconds
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.project = project
        self.max_attempts = max_attempts
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._sleep = sleep
        self._subscriptions: dict[str, _Subscription] = {}
        self._queue: list[_Delivery] = []
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._delivering = threading.Lock()  # one delivery at a time, like a concurrency-1 service
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.dead_letters: list[DeadLetter] = []
        self.delivered: int = 0  # acked deliveries

    # --- Pub/Sub's side ---------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: PushHandler, *, name: str | None = None) -> str:
        """Adds a push subscription on `topic` and returns its full path."""
        topic = topic_path(self.project, topic)
        path = subscription_path(
            self.project, name or f"{topic.rsplit('/', 1)[-1]}-push-{len(self._subscriptions) + 1}"
        )
        with self._wakeup:
            self._subscriptions[path] = _Subscription(path=path, topic=topic, handler=handler)
        return path

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        check_attributes(attributes)
        topic = topic_path(self.project, topic)
        message = LocalMessage(
            message_id=str(next(self._ids)),
            topic=topic,
            data=bytes(data),
            attributes=dict(attributes),
            publish_time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        with self._wakeup:
            now = self._clock()
            for sub in self._subscriptions.values():
                if sub.topic == topic:
                    heapq.heappush(self._queue, _Delivery(now, next(self._order), sub.path, message))
            self._wakeup.notify_all()
        return message.message_id

    def pending(self) -> int:
        """Deliveries waiting (including redeliveries in backoff)."""
        with self._wakeup:
            return len(self._queue)

    # --- running deliveries -----------------------------------------------------------------------
    def run_until_idle(self, timeout: float | None = None) -> int:
        """Delivers until nothing is pending (waiting out backoffs); returns the deliveries made.
        Raises TimeoutError if `timeout` seconds pass with deliveries still pending."""
        deadline = None if timeout is None else self._clock() + timeout
        made = 0
        while True:
            with self._wakeup:
                if not self._queue:
                    return made
                wait = self._queue[0].due - self._clock()
            if deadline is not None and self._clock() + max(wait, 0.0) > deadline:
                raise TimeoutError(f"local bus still has {self.pending()} deliveries pending")
            if wait > 0:
                self._sleep(wait)
                continue
            made += self._deliver_next()

    def start(self) -> None:
        """Delivers in a background thread as messages arrive, until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_forever, name="local-bus", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run_forever(self) -> None:
        while not self._stop.is_set():
            with self._wakeup:
                wait = self._queue[0].due - self._clock() if self._queue else None
                if wait is None or wait > 0:
                    self._wakeup.wait(timeout=min(wait, 1.0) if wait is not None else 1.0)
                    continue
            self._deliver_next()

    def _deliver_next(self) -> int:
        with self._delivering:
            with self._wakeup:
                if not self._queue or self._queue[0].due > self._clock():
                    return 0
                delivery = heapq.heappop(self._queue)
                sub = self._subscriptions[delivery.subscription]
            status = self._call(sub, delivery)
            if status in ACK_STATUSES:
                self.delivered += 1
                return 1
            self._nack(delivery, status)
            return 1

    def _call(self, sub: _Subscription, delivery: _Delivery) -> int:
        request = push_request(delivery.message, sub.path, delivery.attempt)
        try:
            return int(sub.handler(request))
        except Exception:
            log.exception(
                "push handler raised; the message will be redelivered",
                extra={"fields": {"subscription": sub.path, "message_id": delivery.message.message_id}},
            )
            return 500

    def _nack(self, delivery: _Delivery, status: int) -> None:
        if delivery.attempt >= self.max_attempts:
            dead = DeadLetter(delivery.subscription, delivery.message, delivery.attempt, status)
            self.dead_letters.append(dead)
            log.warning(
                "message dead-lettered",
                extra={
                    "fields": {
                        "subscription": delivery.subscription,
                        "message_id": delivery.message.message_id,
                    }
                },
            )
            return
        backoff = min(self.max_backoff, self.min_backoff * 2 ** (delivery.attempt - 1))
        with self._wakeup:
            heapq.heappush(
                self._queue,
                _Delivery(
                    self._clock() + backoff,
                    next(self._order),
                    delivery.subscription,
                    delivery.message,
                    delivery.attempt + 1,
                ),
            )
            self._wakeup.notify_all()
