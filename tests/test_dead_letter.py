"""The dead-letter function (functions/dead_letter/main.py).

It is deployed alone and cannot import `consumer`, so besides its behaviour these tests check that
its copies of consumer's shapes (job record, result CloudEvent, job id, model-name hint, intake
screens) agree with the originals. The emulator tests run the real chain: a push subscription whose
endpoint keeps failing, the Pub/Sub emulator dead-lettering the message, the function handling it
against fake-gcs-server.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumer.jobs.records import JobRecord, Lease, SourceObject
from consumer.jobs.results import read_result, result_message
from tests.emulators import FakeGcs, PubSubEmulator, unique_name

FUNCTION_PATH = Path(__file__).resolve().parents[1] / "functions" / "dead_letter" / "main.py"
NOW = 1_800_000_000.0  # seconds since the epoch, the fixed clock of the unit tests
PROJECT = "rvc-test"


def _load_function() -> types.ModuleType:
    """Imports main.py as the platform would; functions-framework (a deploy-only dependency) is
    replaced, for the import only, by a stand-in whose decorator returns the function unchanged."""
    name = "dead_letter_main"
    if name in sys.modules:
        return sys.modules[name]
    stub_needed = importlib.util.find_spec("functions_framework") is None
    if stub_needed:
        stub = types.ModuleType("functions_framework")
        stub.cloud_event = lambda function: function  # type: ignore[attr-defined]
        sys.modules["functions_framework"] = stub
    try:
        spec = importlib.util.spec_from_file_location(name, FUNCTION_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if stub_needed:
            del sys.modules["functions_framework"]
    return module


fn = _load_function()


# --- stand-ins for the unit tests --------------------------------------------------------------------
class MemoryStore:
    """Job records with generations, like the state bucket; `before_next_write` simulates a racer."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 100
        self.before_next_write: Callable[[], None] | None = None

    def put(self, record: dict[str, Any]) -> None:
        self.generation += 1
        self.objects[record["job_id"]] = (fn.encode_record(record), self.generation)

    def read(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        if job_id not in self.objects:
            return None
        data, generation = self.objects[job_id]
        return json.loads(data), generation

    def write(self, job_id: str, record: dict[str, Any], *, if_generation_match: int) -> None:
        if self.before_next_write is not None:
            racer, self.before_next_write = self.before_next_write, None
            racer()
        current = self.objects.get(job_id, (b"", 0))[1]
        if current != if_generation_match:
            raise fn.Conflict(f"generation {current} != {if_generation_match}")
        self.put(record)

    def record(self, job_id: str) -> dict[str, Any]:
        loaded = self.read(job_id)
        assert loaded is not None, f"no record for {job_id}"
        return loaded[0]


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        self.messages.append((data, dict(attributes)))
        return str(len(self.messages))

    def results(self) -> list[Any]:
        return [read_result(data, attributes) for data, attributes in self.messages]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def deps(store: MemoryStore, publisher: RecordingPublisher) -> Any:
    return fn.Deps(store=store, results=publisher, project=PROJECT, clock=lambda: NOW)


def consumer_record(**changes: Any) -> JobRecord:
    """A job record as the service writes it (consumer's own dataclass)."""
    record = JobRecord(
        job_id="a1b2c3d4e5f60718",
        model_name="alice",
        source=SourceObject(
            uri="gs://inbox/datasets/alice.zip", bucket="inbox", name="datasets/alice.zip", generation=7
        ),
        spec={"model_name": "alice", "epochs": 200},
        status="running",
        stage="train",
        seq=3,
        announced=["accepted"],
        created_at="2027-01-15T08:00:00.000Z",
        updated_at="2027-01-15T08:10:00.000Z",
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def envelope(data: bytes, attributes: dict[str, str], *, message_id: str = "9001") -> dict[str, Any]:
    """The push envelope Eventarc delivers for a message on the dead-letter topic."""
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": "2027-01-15T08:30:00.000Z",
        },
        "subscription": "projects/rvc-test/subscriptions/eventarc-dead-letter",
    }


DEAD_LETTER_ATTRIBUTES = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "10",
    "CloudPubSubDeadLetterSourceSubscription": "rvc-work-push",
    "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2027-01-15T08:20:00.000Z",
}


def work_letter(job_id: str, seq: int) -> Any:
    token = json.dumps({"job_id": job_id, "seq": seq}).encode()
    attributes = {"job_id": job_id, "seq": str(seq), **DEAD_LETTER_ATTRIBUTES}
    return fn.DeadLetter.from_push(envelope(token, attributes))


def intake_letter(name: str, *, generation: int = 7, metadata: dict[str, str] | None = None) -> Any:
    resource: dict[str, Any] = {"bucket": "inbox", "name": name, "generation": str(generation)}
    if metadata is not None:
        resource["metadata"] = metadata
    attributes = {
        "bucketId": "inbox",
        "objectId": name,
        "objectGeneration": str(generation),
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        **DEAD_LETTER_ATTRIBUTES,
        "CloudPubSubDeadLetterSourceSubscription": "rvc-intake-push",
    }
    return fn.DeadLetter.from_push(envelope(json.dumps(resource).encode(), attributes))


# --- behaviour --------------------------------------------------------------------------------------------
def test_dead_lettered_work_token_fails_the_job_with_one_failed_result(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    store.put(consumer_record(lease=Lease(owner="old-instance", expires_at=NOW - 30)).to_json())

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert outcome.action == "reported"
    [result] = publisher.results()
    assert result.kind == "failed"
    assert result.attributes["job_id"] == "a1b2c3d4e5f60718"
    assert result.data["error"]["code"] == "dead_lettered"
    assert result.data["dead_letter"]["delivery_count"] == 10
    assert result.data["dead_letter"]["attributes"] == {"job_id": "a1b2c3d4e5f60718", "seq": "3"}


def test_dead_lettered_job_record_is_marked_failed(store: MemoryStore, deps: Any) -> None:
    store.put(consumer_record().to_json())

    fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    record = JobRecord.from_json(store.record("a1b2c3d4e5f60718"))
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "dead_lettered"
    assert record.error["stage"] == "train"
    assert "failed" in record.announced


def test_the_same_dead_letter_handled_twice_reports_once(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    store.put(consumer_record().to_json())
    letter = work_letter("a1b2c3d4e5f60718", 3)

    fn.process(letter, deps)
    second = fn.process(letter, deps)

    assert second.action == "already_reported"
    assert len(publisher.messages) == 1


def test_job_with_a_final_result_is_left_alone(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    store.put(
        consumer_record(status="succeeded", stage="done", announced=["accepted", "succeeded"]).to_json()
    )
    before = store.objects["a1b2c3d4e5f60718"]

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert outcome.action == "already_reported"
    assert publisher.messages == []
    assert store.objects["a1b2c3d4e5f60718"] == before


def test_final_result_that_never_went_out_is_published_as_the_service_would(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "storage_unavailable", "message": "503s", "retryable": True}
    record = consumer_record(status="failed", error=error)
    store.put(record.to_json())

    fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    [(data, attributes)] = publisher.messages
    expected = result_message("failed", record, project=PROJECT, clock=lambda: NOW)
    assert (json.loads(data), attributes) == (json.loads(expected.data), expected.attributes)
    assert "failed" in store.record("a1b2c3d4e5f60718")["announced"]


def test_result_the_service_is_publishing_right_now_is_left_to_it(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "slice_failed", "message": "boom", "retryable": False}
    store.put(consumer_record(status="failed", error=error, announcing={"failed": NOW - 5}).to_json())

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert outcome.action == "claimed_elsewhere"
    assert publisher.messages == []


def test_a_claim_left_by_a_crashed_publisher_is_taken_over(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "slice_failed", "message": "boom", "retryable": False}
    store.put(consumer_record(status="failed", error=error, announcing={"failed": NOW - 600}).to_json())

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert outcome.action == "reported"
    assert len(publisher.messages) == 1
    record = store.record("a1b2c3d4e5f60718")
    assert "failed" in record["announced"] and record["announcing"] == {}


def test_stale_work_token_is_dropped(store: MemoryStore, publisher: RecordingPublisher, deps: Any) -> None:
    store.put(consumer_record(seq=5).to_json())

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 2), deps)

    assert outcome.action == "stale"
    assert publisher.messages == []
    assert store.record("a1b2c3d4e5f60718")["status"] == "running"


def test_job_leased_by_a_live_slice_is_retried_later(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    store.put(consumer_record(lease=Lease(owner="busy-instance", expires_at=NOW + 45)).to_json())

    with pytest.raises(fn.RetryLater, match="busy-instance"):
        fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert publisher.messages == []
    assert store.record("a1b2c3d4e5f60718")["status"] == "running"


def test_job_that_finished_during_the_update_is_not_failed(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    store.put(consumer_record().to_json())
    finished = consumer_record(status="succeeded", stage="done", announced=["accepted", "succeeded"])
    store.before_next_write = lambda: store.put(finished.to_json())  # the service wins the race

    outcome = fn.process(work_letter("a1b2c3d4e5f60718", 3), deps)

    assert outcome.action == "already_reported"
    assert publisher.messages == []
    assert store.record("a1b2c3d4e5f60718")["status"] == "succeeded"


def test_work_token_of_a_job_without_record_is_dropped(publisher: RecordingPublisher, deps: Any) -> None:
    outcome = fn.process(work_letter("0000000000000000", 1), deps)

    assert outcome.action == "unknown_job"
    assert publisher.messages == []


def test_dead_lettered_upload_without_record_gets_a_failed_record_and_result(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    letter = intake_letter("datasets/voice.zip", metadata={"Model-Name": "alice", "epochs": "50"})

    fn.process(letter, deps)

    job_id = fn.job_id_for("inbox/datasets/voice.zip#7")
    record = JobRecord.from_json(store.record(job_id))
    assert (record.status, record.stage, record.model_name) == ("failed", "intake", "alice")
    assert record.source == SourceObject("gs://inbox/datasets/voice.zip", "inbox", "datasets/voice.zip", 7)
    [result] = publisher.results()
    assert (result.kind, result.subject) == ("failed", "alice")
    assert result.data["dead_letter"]["attributes"]["objectId"] == "datasets/voice.zip"


def test_dead_lettered_upload_whose_job_started_is_left_alone(
    store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    job_id = fn.job_id_for("inbox/datasets/alice.zip#7")
    store.put(consumer_record(job_id=job_id, status="queued", stage="queued", seq=0).to_json())

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "job_started"
    assert publisher.messages == []


@pytest.mark.parametrize(
    "name",
    [
        "gcloud/tmp/parallel_composite_uploads/part-1",
        "elsewhere/voice.zip",
        "datasets/notes.txt",
        "datasets/",
    ],
)
def test_dead_lettered_notification_of_a_non_dataset_is_ignored(
    name: str, store: MemoryStore, publisher: RecordingPublisher, deps: Any
) -> None:
    outcome = fn.process(intake_letter(name), deps)

    assert outcome.action == "ignored"
    assert publisher.messages == [] and store.objects == {}


def test_message_that_is_neither_upload_nor_token_is_ignored(
    publisher: RecordingPublisher, deps: Any
) -> None:
    letter = fn.DeadLetter.from_push(envelope(b"not json", dict(DEAD_LETTER_ATTRIBUTES)))

    assert fn.process(letter, deps).action == "ignored"
    assert publisher.messages == []


def test_unreadable_event_is_acked_without_raising(capsys: pytest.CaptureFixture[str]) -> None:
    fn.handle(types.SimpleNamespace(data={"no": "message"}))

    assert "unreadable dead-letter event" in capsys.readouterr().out


# --- the copies agree with consumer's originals -----------------------------------------------------------
def test_failed_result_matches_the_services_result_message() -> None:
    error = {"stage": "train", "code": "dead_lettered", "message": "gave up", "retryable": True}
    record = consumer_record(status="failed", error=error, superseded_by=None)
    extra = {"dead_letter": {"delivery_count": 5}}

    data, attributes = fn.result_message(
        "failed", record.to_json(), project=PROJECT, extra=extra, clock=lambda: NOW
    )

    expected = result_message("failed", record, project=PROJECT, extra=extra, clock=lambda: NOW)
    assert attributes == expected.attributes
    assert json.loads(data) == json.loads(expected.data)


def test_succeeded_result_matches_the_services_result_message() -> None:
    record = consumer_record(
        status="succeeded",
        artifacts={"model": "gs://models/alice/a1/alice.pth"},
        metrics={"epochs": 200},
        dataset_report={"segments": 40},
    )

    data, attributes = fn.result_message("succeeded", record.to_json(), project=PROJECT, clock=lambda: NOW)

    expected = result_message("succeeded", record, project=PROJECT, clock=lambda: NOW)
    assert (json.loads(data), attributes) == (json.loads(expected.data), expected.attributes)


def test_record_fields_match_the_services_job_record() -> None:
    consumer_defaults = {f.name: _default_of(f) for f in fields(JobRecord)}
    required = {name for name, default in consumer_defaults.items() if default is MISSING}

    assert required == {"job_id", "model_name", "source", "spec"}  # what new_failed_record fills in
    service_defaults = {k: v for k, v in consumer_defaults.items() if k not in required}
    assert service_defaults == fn.RECORD_DEFAULTS


def _default_of(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def test_job_id_matches_the_services() -> None:
    from consumer.jobs.records import job_id_for

    assert fn.job_id_for("inbox/datasets/alice.zip#1736358966947877") == job_id_for(
        "inbox/datasets/alice.zip#1736358966947877"
    )


@pytest.mark.parametrize(
    ("metadata", "name"),
    [
        ({"model-name": "alice"}, "datasets/voice.zip"),
        ({"Model_Name": "bob"}, "datasets/voice.zip"),
        ({"name": "bad name!"}, "datasets/My Voice (2).zip"),
        ({"name": "carol", "model": "dave"}, "datasets/voice.zip"),
        ({}, "datasets/deep/nested/carol.ZIP"),
        ({"epochs": "10"}, "datasets/..zip"),
    ],
)
def test_model_name_hint_matches_the_services(metadata: dict[str, str], name: str) -> None:
    from consumer.jobs.intake import _model_name_hint

    assert fn.model_name_hint(metadata, name) == _model_name_hint(metadata, name)


def test_model_name_keys_match_the_services_aliases() -> None:
    from consumer.jobs.metadata import ALIASES

    service_keys = {key for key, target in ALIASES.items() if target == "model_name"}
    assert service_keys == fn.MODEL_NAME_KEYS


@pytest.mark.parametrize(
    "name",
    [
        "datasets/alice.zip",
        "datasets/sub/alice.ZIP",
        "gcloud/tmp/parallel_composite_uploads/x",
        "elsewhere/a.zip",
        "datasets/a.txt",
        "datasets/sub/",
    ],
)
def test_intake_screens_match_the_services(name: str) -> None:
    from consumer.edge.deliveries import ObjectFinalized
    from consumer.jobs.intake import screen
    from consumer.settings import Settings

    settings = Settings(state_bucket="gs://state", models_bucket="gs://models", inbox_prefix="datasets/")
    service_ignores = screen(ObjectFinalized("inbox", name, 7, {}), settings) is not None

    function_ignores = isinstance(fn.read_letter(intake_letter(name), "datasets/"), str)

    assert function_ignores == service_ignores


# --- against the emulators --------------------------------------------------------------------------------
class FailingEndpoint:
    """A push endpoint that answers 503 to everything, so Pub/Sub gives up and dead-letters."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/push"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing_endpoint() -> Iterator[FailingEndpoint]:
    endpoint = FailingEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture
def function_env(emulator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A state bucket on fake-gcs-server, a results topic with a pull subscription, and the function's
    environment pointing at them."""
    from consumer.adapters.messaging.admin import SubscriptionSpec, ensure_subscription, ensure_topic
    from consumer.adapters.storage.gcs import default_client

    project = emulator_env["GOOGLE_CLOUD_PROJECT"]
    state_bucket, results_topic = unique_name("state"), unique_name("results")
    default_client().create_bucket(state_bucket)
    ensure_topic(project, results_topic)
    ensure_subscription(
        project, SubscriptionSpec(name=results_topic, topic=results_topic, ack_deadline_seconds=10)
    )
    env = {
        "STATE_BUCKET": f"gs://{state_bucket}",
        "RESULTS_TOPIC": results_topic,
        "INBOX_PREFIX": "datasets/",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fn.deps_from_env.cache_clear()
    try:
        yield {**emulator_env, **env}
    finally:
        fn.deps_from_env.cache_clear()


def dead_letter_via_emulator(
    project: str, source_topic: str, endpoint: FailingEndpoint, publish: Callable[[], None], *, match: str
) -> Any:
    """Pushes what `publish` sends to `endpoint` until the emulator dead-letters it; returns the
    dead-lettered message (the first whose data or attributes contain `match`)."""
    from consumer.adapters.messaging.admin import SubscriptionSpec, ensure_subscription, ensure_topic, pull

    dead_topic = unique_name("dead")
    ensure_topic(project, dead_topic)
    ensure_subscription(project, SubscriptionSpec(name=dead_topic, topic=dead_topic, ack_deadline_seconds=10))
    push_subscription = unique_name("push")
    ensure_subscription(
        project,
        SubscriptionSpec(
            name=push_subscription,
            topic=source_topic,
            push_endpoint=endpoint.url,
            ack_deadline_seconds=10,
            dead_letter_topic=dead_topic,
            max_delivery_attempts=5,
        ),
    )
    try:
        publish()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for message in pull(project, dead_topic, timeout=2):
                if match in message.data.decode(errors="replace") or match in json.dumps(message.attributes):
                    return message
        raise AssertionError("the emulator never dead-lettered the message")
    finally:  # a failing push subscription left behind would keep pushing for the rest of the session
        _delete_subscription(project, push_subscription)


def _delete_subscription(project: str, name: str) -> None:
    from consumer.adapters.messaging import subscription_path
    from consumer.adapters.messaging.admin import subscriber_admin

    client = subscriber_admin()
    try:
        client.delete_subscription(subscription=subscription_path(project, name), timeout=10)
    finally:
        client.transport.close()


def as_cloud_event(message: Any) -> Any:
    """The CloudEvent Eventarc would hand the function for a message on the dead-letter topic."""
    body = envelope(message.data, message.attributes, message_id=message.message_id)
    return types.SimpleNamespace(data=body)


def pulled_results(project: str, subscription: str) -> list[Any]:
    from consumer.adapters.messaging.admin import pull

    return [read_result(m.data, m.attributes) for m in pull(project, subscription, timeout=3)]


@pytest.mark.emulator
def test_work_token_dead_lettered_by_pubsub_fails_the_job_once(
    function_env: dict[str, str], failing_endpoint: FailingEndpoint, pubsub_emulator: PubSubEmulator
) -> None:
    from consumer.adapters.messaging.admin import ensure_topic
    from consumer.adapters.messaging.pubsub import PubSubPublisher
    from consumer.adapters.storage.gcs import GcsStore
    from consumer.jobs.records import JobRecords
    from consumer.work.slices import WorkQueue, WorkToken

    project = function_env["GOOGLE_CLOUD_PROJECT"]
    records = JobRecords(GcsStore(), function_env["STATE_BUCKET"])
    records.create(consumer_record(job_id="feedfacecafe0001"))
    work_topic = unique_name("work")
    ensure_topic(project, work_topic)
    queue = WorkQueue(PubSubPublisher(project), work_topic)

    message = dead_letter_via_emulator(
        project,
        work_topic,
        failing_endpoint,
        lambda: queue.publish(WorkToken("feedfacecafe0001", 3)),
        match="feedfacecafe0001",
    )
    fn.handle(as_cloud_event(message))
    fn.handle(as_cloud_event(message))  # Eventarc may deliver it twice

    [result] = pulled_results(project, function_env["RESULTS_TOPIC"])
    assert (result.kind, result.attributes["job_id"]) == ("failed", "feedfacecafe0001")
    assert result.data["dead_letter"]["delivery_count"] == 5
    assert result.data["dead_letter"]["attributes"] == {"job_id": "feedfacecafe0001", "seq": "3"}
    stored = records.get("feedfacecafe0001")
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error["code"] == "dead_lettered"


@pytest.mark.emulator
def test_upload_notification_dead_lettered_by_pubsub_becomes_a_failed_job(
    function_env: dict[str, str],
    failing_endpoint: FailingEndpoint,
    fake_gcs: FakeGcs,
    pubsub_emulator: PubSubEmulator,
) -> None:
    from consumer.adapters.storage.gcs import GcsStore, default_client
    from consumer.jobs.records import JobRecords

    project = function_env["GOOGLE_CLOUD_PROJECT"]
    inbox = unique_name("inbox")
    client = default_client()
    client.create_bucket(inbox)
    assert fake_gcs.notification_topic is not None

    def upload() -> None:
        blob = client.bucket(inbox).blob("datasets/voice.zip")
        blob.metadata = {"model-name": "alice", "epochs": "50"}
        blob.upload_from_string(b"PK\x05\x06" + bytes(18), content_type="application/zip")

    message = dead_letter_via_emulator(
        project, fake_gcs.notification_topic, failing_endpoint, upload, match=inbox
    )
    fn.handle(as_cloud_event(message))

    [result] = [r for r in pulled_results(project, function_env["RESULTS_TOPIC"]) if r.kind == "failed"]
    assert result.subject == "alice"
    assert result.data["source"]["bucket"] == inbox
    stored = JobRecords(GcsStore(), function_env["STATE_BUCKET"]).get(result.attributes["job_id"])
    assert stored is not None and (stored.status, stored.stage) == ("failed", "intake")
