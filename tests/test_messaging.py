"""Publishing: to the Pub/Sub emulator (bounded when it is down), and the in-process local bus."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from consumer.adapters.messaging import PushRequest, open_publisher
from consumer.adapters.messaging.admin import SubscriptionSpec, ensure_subscription, ensure_topic, pull
from consumer.adapters.messaging.local_bus import LocalBus
from consumer.adapters.messaging.pubsub import PubSubPublisher, default_client
from consumer.adapters.retry import PUBLISH_POLICY, RetryPolicy
from consumer.errors import PublishFailed
from rvc_core.errors import ConfigError
from tests.emulators import PubSubEmulator, TcpFaultProxy, unique_name


def topic_with_subscription(emulator: PubSubEmulator) -> tuple[str, str]:
    topic, subscription = unique_name("topic"), unique_name("sub")
    ensure_topic(emulator.project, topic, emulator_host=emulator.host)
    ensure_subscription(emulator.project, SubscriptionSpec(subscription, topic), emulator_host=emulator.host)
    return topic, subscription


def publisher_for(host: str, project: str, policy: RetryPolicy = PUBLISH_POLICY) -> PubSubPublisher:
    return PubSubPublisher(project, client_factory=lambda: default_client(host), policy=policy)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Pub/Sub emulator -----------------------------------------------------------------------------
@pytest.mark.emulator
def test_published_message_is_pulled_with_data_and_attributes(pubsub_emulator: PubSubEmulator) -> None:
    topic, subscription = topic_with_subscription(pubsub_emulator)
    publisher = publisher_for(pubsub_emulator.host, pubsub_emulator.project)
    message_id = publisher.publish(topic, b'{"job_id": "j1"}', {"ce-type": "x.accepted", "job_id": "j1"})
    [received] = pull(pubsub_emulator.project, subscription, emulator_host=pubsub_emulator.host)
    assert (received.message_id, received.data) == (message_id, b'{"job_id": "j1"}')
    assert received.attributes == {"ce-type": "x.accepted", "job_id": "j1"}


@pytest.mark.emulator
def test_gcloud_pulls_what_was_published(
    pubsub_emulator: PubSubEmulator, gcloud_cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, subscription = topic_with_subscription(pubsub_emulator)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    open_publisher("pubsub", project=pubsub_emulator.project).publish(
        topic, b"hello", {"status": "succeeded"}
    )
    done = subprocess.run(
        ["gcloud", "pubsub", "subscriptions", "pull", subscription, "--auto-ack", "--format=json"],
        env=gcloud_cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [entry] = json.loads(done.stdout)
    assert base64.b64decode(entry["message"]["data"]) == b"hello"
    assert entry["message"]["attributes"] == {"status": "succeeded"}


def test_publish_to_unreachable_emulator_fails_within_seconds() -> None:
    publisher = publisher_for(f"127.0.0.1:{closed_port()}", "rvc-test")
    started = time.monotonic()
    with pytest.raises(PublishFailed) as caught:
        publisher.publish("rvc-work", b"token", {})
    assert caught.value.retryable
    assert time.monotonic() - started < PUBLISH_POLICY.deadline + PUBLISH_POLICY.call_timeout


@pytest.mark.emulator
def test_publish_to_missing_topic_fails_at_once_and_is_not_retryable(pubsub_emulator: PubSubEmulator) -> None:
    publisher = publisher_for(pubsub_emulator.host, pubsub_emulator.project)
    started = time.monotonic()
    with pytest.raises(PublishFailed) as caught:
        publisher.publish(unique_name("never-created"), b"x", {})
    assert not caught.value.retryable
    assert time.monotonic() - started < 2.0


@pytest.mark.emulator
def test_publish_rides_out_a_short_outage(
    pubsub_emulator: PubSubEmulator, pubsub_fault_proxy: TcpFaultProxy
) -> None:
    topic, subscription = topic_with_subscription(pubsub_emulator)
    publisher = publisher_for(pubsub_fault_proxy.host, pubsub_emulator.project)
    publisher.publish(topic, b"before", {})  # the channel is connected
    pubsub_fault_proxy.cut_for(1.0)
    publisher.publish(topic, b"after", {})
    assert pubsub_fault_proxy.refused > 0
    received = pull(pubsub_emulator.project, subscription, emulator_host=pubsub_emulator.host)
    assert sorted(m.data for m in received) == [b"after", b"before"]


def test_attributes_must_be_strings() -> None:
    with pytest.raises(TypeError, match="epochs"):
        LocalBus().publish("rvc-work", b"x", {"epochs": 3})  # type: ignore[dict-item]


def test_unknown_messaging_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pubsub"):
        open_publisher("kafka", project="p")


# --- the local bus --------------------------------------------------------------------------------
class Recorder:
    """A push endpoint that answers the statuses it is given, in order, then 204."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[PushRequest] = []

    def __call__(self, request: PushRequest) -> int:
        self.requests.append(request)
        return self.statuses.pop(0) if self.statuses else 204

    def envelopes(self) -> list[dict]:
        return [json.loads(r.body) for r in self.requests]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def bus_with_clock(**kwargs: object) -> tuple[LocalBus, FakeClock]:
    clock = FakeClock()
    return LocalBus(project="local", clock=clock, sleep=clock.sleep, **kwargs), clock  # type: ignore[arg-type]


def test_local_bus_pushes_the_wrapped_pubsub_envelope() -> None:
    bus, _ = bus_with_clock()
    endpoint = Recorder()
    subscription = bus.subscribe("rvc-work", endpoint, name="rvc-work-push")
    message_id = bus.publish("rvc-work", b'{"job_id": "j1", "seq": 0}', {"job_id": "j1"})
    bus.run_until_idle()
    [request] = endpoint.requests
    envelope = json.loads(request.body)
    assert request.headers["Content-Type"] == "application/json"
    assert envelope["subscription"] == subscription == "projects/local/subscriptions/rvc-work-push"
    assert base64.b64decode(envelope["message"]["data"]) == b'{"job_id": "j1", "seq": 0}'
    assert envelope["message"]["attributes"] == {"job_id": "j1"}
    assert envelope["message"]["messageId"] == envelope["message"]["message_id"] == message_id
    assert envelope["message"]["publishTime"].endswith("Z")


def test_local_bus_redelivers_after_failure_until_acked() -> None:
    bus, _ = bus_with_clock()
    endpoint = Recorder(503, 429)
    bus.subscribe("rvc-work", endpoint)
    bus.publish("rvc-work", b"token", {})
    bus.run_until_idle()
    assert [e["deliveryAttempt"] for e in endpoint.envelopes()] == [1, 2, 3]
    assert bus.delivered == 1 and bus.dead_letters == []


def test_local_bus_backs_off_exponentially_between_redeliveries() -> None:
    bus, clock = bus_with_clock(min_backoff=1.0, max_backoff=3.0, max_attempts=5)
    bus.subscribe("rvc-work", Recorder(500, 500, 500, 500))
    bus.publish("rvc-work", b"token", {})
    bus.run_until_idle()
    assert clock.slept == [1.0, 2.0, 3.0, 3.0]


def test_local_bus_dead_letters_after_max_attempts() -> None:
    bus, _ = bus_with_clock(max_attempts=3)
    endpoint = Recorder(500, 500, 500, 500)
    bus.subscribe("rvc-work", endpoint)
    bus.publish("rvc-work", b"poison", {"job_id": "j9"})
    bus.run_until_idle()
    assert len(endpoint.requests) == 3
    [dead] = bus.dead_letters
    assert (dead.message.data, dead.attempts, dead.last_status) == (b"poison", 3, 500)


def test_local_bus_treats_a_raising_handler_as_a_failed_delivery() -> None:
    bus, _ = bus_with_clock()
    calls: list[int] = []

    def flaky(request: PushRequest) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return 200

    bus.subscribe("rvc-work", flaky)
    bus.publish("rvc-work", b"token", {})
    bus.run_until_idle()
    assert len(calls) == 2 and bus.delivered == 1


def test_message_published_by_a_handler_is_delivered_in_the_same_run() -> None:
    bus, _ = bus_with_clock()
    seen: list[int] = []

    def work(request: PushRequest) -> int:
        seq = json.loads(base64.b64decode(json.loads(request.body)["message"]["data"]))["seq"]
        seen.append(seq)
        if seq < 3:
            bus.publish("rvc-work", json.dumps({"seq": seq + 1}).encode(), {})
        return 204

    bus.subscribe("rvc-work", work)
    bus.publish("rvc-work", b'{"seq": 0}', {})
    bus.run_until_idle()
    assert seen == [0, 1, 2, 3]


def test_each_subscription_gets_its_own_copy_and_unsubscribed_topics_drop() -> None:
    bus, _ = bus_with_clock()
    first, second, other = Recorder(500), Recorder(), Recorder()
    bus.subscribe("rvc-results", first)
    bus.subscribe("rvc-results", second)
    bus.subscribe("rvc-intake", other)
    bus.publish("rvc-results", b"succeeded", {})
    bus.publish("rvc-nobody-listens", b"lost", {})
    bus.run_until_idle()
    assert (len(first.requests), len(second.requests), len(other.requests)) == (2, 1, 0)
    assert bus.pending() == 0


def test_run_until_idle_gives_up_after_its_timeout() -> None:
    bus, _ = bus_with_clock(min_backoff=60.0, max_attempts=10)
    bus.subscribe("rvc-work", Recorder(*[500] * 10))
    bus.publish("rvc-work", b"token", {})
    with pytest.raises(TimeoutError):
        bus.run_until_idle(timeout=30.0)


def test_background_delivery_runs_until_stopped() -> None:
    bus = LocalBus(min_backoff=0.01)
    endpoint = Recorder(500)
    bus.subscribe("rvc-work", endpoint)
    bus.start()
    try:
        bus.publish("rvc-work", b"token", {})
        deadline = time.monotonic() + 5
        while bus.delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        bus.stop()
    assert bus.delivered == 1 and len(endpoint.requests) == 2
