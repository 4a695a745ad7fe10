"""The dead-letter function (functions/dead_letter/main.py): a dead-lettered intake delivery.

The function imports the job protocol from `consumer.jobs` (tests/test_job_protocol.py checks that its
deploy archive carries it), so these tests check behaviour only. The emulator test runs the real chain:
a push subscription whose endpoint keeps failing, the Pub/Sub emulator dead-lettering the message, the
function handling it against fake-gcs-server.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import NotFound, PreconditionFailed
from consumer.jobs.records import JobRecord, JobRecords, SourceObject, job_id_for, source_key
from consumer.jobs.results import Results, read_result, result_message
from tests.emulators import FakeGcs, PubSubEmulator, unique_name

FUNCTION_PATH = Path(__file__).resolve().parents[1] / "functions" / "dead_letter" / "main.py"
PROJECT = "rvc-test"
STATE = "gs://state"
RESULTS_TOPIC = "results"


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
    """The part of an ObjectStore that JobRecords uses, with generations like Cloud Storage's;
    `before_next_write` runs a racer just before the next write."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 100
        self.before_next_write: Callable[[], None] | None = None

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        if uri not in self.objects:
            raise NotFound(uri)
        return self.objects[uri]

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        if self.before_next_write is not None:
            racer, self.before_next_write = self.before_next_write, None
            racer()
        current = self.objects.get(uri, (b"", 0))[1]
        if if_generation_match is not None and current != if_generation_match:
            raise PreconditionFailed(f"{uri}: generation {current} != {if_generation_match}")
        self.generation += 1
        self.objects[uri] = (data, self.generation)
        return self.generation


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        self.messages.append((topic, data, dict(attributes)))
        return str(len(self.messages))

    def results(self) -> list[Any]:
        return [read_result(data, attributes) for _, data, attributes in self.messages]


class RecordingTasks:
    def __init__(self) -> None:
        self.created: dict[str, bytes] = {}

    def create(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        if name in self.created:
            return False
        self.created[name] = body
        return True


@pytest.fixture
def records() -> JobRecords:
    return JobRecords(MemoryStore(), STATE)  # type: ignore[arg-type]


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def deps(records: JobRecords, publisher: RecordingPublisher) -> Any:
    results = Results(publisher, RESULTS_TOPIC, project=PROJECT)
    return fn.Deps(records=records, results=results, own_buckets=(STATE, "gs://models"))


ALICE = job_id_for(source_key("inbox", "datasets/alice.zip", 7))


def service_record(**changes: Any) -> JobRecord:
    """The record the service keeps for inbox/datasets/alice.zip#7, running by default."""
    record = JobRecord(
        job_id=ALICE,
        model_name="alice",
        source=SourceObject(
            uri="gs://inbox/datasets/alice.zip", bucket="inbox", name="datasets/alice.zip", generation=7
        ),
        spec={"model_name": "alice", "epochs": 200},
        status="running",
        stage="train",
        seq=3,
        announced=["accepted"],
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def put(records: JobRecords, record: JobRecord) -> None:
    """Stores `record` as it is, replacing any record of its job."""
    records.store.write_bytes(records.record_uri(record.job_id), json.dumps(record.to_json()).encode())


def raw_record(records: JobRecords, job_id: str) -> bytes:
    return records.store.read_bytes(records.record_uri(job_id))[0]


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
    "CloudPubSubDeadLetterSourceSubscription": "rvc-intake-push",
    "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2027-01-15T08:20:00.000Z",
}


def intake_letter(
    name: str, *, bucket: str = "inbox", generation: int = 7, metadata: dict[str, str] | None = None
) -> Any:
    resource: dict[str, Any] = {"bucket": bucket, "name": name, "generation": str(generation)}
    if metadata is not None:
        resource["metadata"] = metadata
    attributes = {
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        **DEAD_LETTER_ATTRIBUTES,
    }
    return fn.DeadLetter.from_push(envelope(json.dumps(resource).encode(), attributes))


# --- behaviour --------------------------------------------------------------------------------------------
def test_dead_lettered_upload_without_record_gets_a_failed_record_and_one_failed_result(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    letter = intake_letter("datasets/voice.zip", metadata={"Model-Name": "alice", "epochs": "50"})

    outcome = fn.process(letter, deps)

    job_id = job_id_for(source_key("inbox", "datasets/voice.zip", 7))
    assert (outcome.action, outcome.job_id) == ("reported", job_id)
    record = records.get(job_id)
    assert record is not None
    assert (record.status, record.stage, record.model_name) == ("failed", "intake", "alice")
    assert record.source == SourceObject("gs://inbox/datasets/voice.zip", "inbox", "datasets/voice.zip", 7)
    assert record.error is not None and record.error["code"] == "dead_lettered"
    assert record.announced == ["failed"] and record.announcing == {}
    [result] = publisher.results()
    assert (result.kind, result.subject, result.attributes["job_id"]) == ("failed", "alice", job_id)
    assert result.data["error"]["code"] == "dead_lettered"
    assert result.data["dead_letter"]["delivery_count"] == 10
    assert result.data["dead_letter"]["attributes"]["objectId"] == "datasets/voice.zip"
    assert [topic for topic, _, _ in publisher.messages] == [RESULTS_TOPIC]


def test_the_same_dead_letter_handled_twice_reports_once(publisher: RecordingPublisher, deps: Any) -> None:
    letter = intake_letter("datasets/voice.zip")

    fn.process(letter, deps)
    second = fn.process(letter, deps)

    assert second.action == "already_reported"
    assert len(publisher.messages) == 1


def test_dead_lettered_intake_never_touches_a_healthy_queued_job(tmp_path: Path) -> None:
    """Behaviour 5: the real Intake queued the job (and published its `accepted`); a dead-lettered
    duplicate of the same notification leaves its record queued and publishes nothing."""
    from consumer.edge.deliveries import ObjectFinalized
    from consumer.services import build_services
    from consumer.settings import Settings

    settings = Settings.from_env(
        {
            "STATE_BUCKET": f"file://{tmp_path}/state",
            "MODELS_BUCKET": f"file://{tmp_path}/models",
            "MESSAGING": "local",
            "SERVICE_ROLE": "api",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
    )
    publisher, tasks = RecordingPublisher(), RecordingTasks()
    services = build_services(settings, publisher=publisher, tasks=tasks)
    assert services.intake is not None
    accepted = services.intake.accept_upload(
        ObjectFinalized("inbox", "datasets/alice.zip", 7, {"epochs": "5"})
    )
    assert (accepted.outcome, accepted.job_id) == ("accepted", ALICE)
    before = raw_record(services.records, ALICE)
    published = len(publisher.messages)
    results = Results(publisher, settings.results_topic, project=PROJECT)
    deps = fn.Deps(records=services.records, results=results, inbox_prefix=settings.inbox_prefix)

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "job_healthy"
    record = services.records.get(ALICE)
    assert record is not None and record.status == "queued"
    assert raw_record(services.records, ALICE) == before
    assert len(publisher.messages) == published
    assert "failed" not in {result.kind for result in publisher.results()}
    assert list(tasks.created) == [f"{ALICE}-0"]


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "running", "stage": "train", "seq": 3},
        {"status": "queued", "stage": "queued", "seq": 0, "announced": ["accepted"]},
        {"status": "queued", "stage": "queued", "seq": 2, "announced": []},
    ],
    ids=["running", "queued", "moved_on"],
)
def test_job_that_intake_had_finished_with_is_left_alone(
    changes: dict[str, Any], records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    put(records, service_record(**changes))
    before = raw_record(records, ALICE)

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "job_healthy"
    assert publisher.messages == []
    assert raw_record(records, ALICE) == before


def test_job_whose_intake_never_finished_is_marked_failed_once(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    stale_claim = time.time() - 600  # left by an intake delivery that died announcing the job
    put(
        records,
        service_record(
            status="queued", stage="queued", seq=0, announced=[], announcing={"accepted": stale_claim}
        ),
    )

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "reported"
    record = records.get(ALICE)
    assert record is not None and record.status == "failed"
    assert record.error is not None and (record.error["code"], record.error["stage"]) == (
        "dead_lettered",
        "intake",
    )
    assert "failed" in record.announced
    [result] = publisher.results()
    assert (result.kind, result.attributes["job_id"]) == ("failed", ALICE)


def test_job_that_intake_is_announcing_right_now_is_retried_later(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    put(
        records,
        service_record(
            status="queued", stage="queued", seq=0, announced=[], announcing={"accepted": time.time()}
        ),
    )

    with pytest.raises(fn.RetryLater, match="intake is announcing"):
        fn.process(intake_letter("datasets/alice.zip"), deps)

    assert publisher.messages == []
    record = records.get(ALICE)
    assert record is not None and record.status == "queued"


def test_job_with_a_final_result_is_left_alone(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    put(records, service_record(status="succeeded", stage="done", announced=["accepted", "succeeded"]))
    before = raw_record(records, ALICE)

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "already_reported"
    assert publisher.messages == []
    assert raw_record(records, ALICE) == before


def test_final_result_that_never_went_out_is_published_as_the_service_would(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "storage_unavailable", "message": "503s", "retryable": True}
    record = service_record(status="failed", error=error)
    put(records, record)

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "reported"
    [(_, data, attributes)] = publisher.messages
    expected = result_message("failed", record, project=PROJECT)
    ignore_time = {k: v for k, v in attributes.items() if k != "ce-time"}
    assert (json.loads(data), ignore_time) == (
        json.loads(expected.data),
        {k: v for k, v in expected.attributes.items() if k != "ce-time"},
    )
    stored = records.get(ALICE)
    assert stored is not None and "failed" in stored.announced


def test_result_another_publisher_claimed_moments_ago_is_retried_later(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "slice_failed", "message": "boom", "retryable": False}
    put(records, service_record(status="failed", error=error, announcing={"failed": time.time() - 5}))

    with pytest.raises(fn.RetryLater, match="claimed by another publisher"):
        fn.process(intake_letter("datasets/alice.zip"), deps)

    assert publisher.messages == []


def test_a_claim_left_by_a_crashed_publisher_is_taken_over(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    error = {"stage": "train", "code": "slice_failed", "message": "boom", "retryable": False}
    put(records, service_record(status="failed", error=error, announcing={"failed": time.time() - 600}))

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "reported"
    assert len(publisher.messages) == 1
    record = records.get(ALICE)
    assert record is not None and "failed" in record.announced and record.announcing == {}


def test_job_that_intake_finished_during_the_update_is_not_failed(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    put(records, service_record(status="queued", stage="queued", seq=0, announced=[]))
    queued = service_record(status="queued", stage="queued", seq=0, announced=["accepted"])
    records.store.before_next_write = lambda: put(records, queued)  # intake wins the race

    outcome = fn.process(intake_letter("datasets/alice.zip"), deps)

    assert outcome.action == "job_healthy"
    assert publisher.messages == []
    record = records.get(ALICE)
    assert record is not None and record.status == "queued"


def test_failed_record_made_by_a_racing_delivery_is_reported_once(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    letter = intake_letter("datasets/voice.zip")
    records.store.before_next_write = lambda: fn.process(letter, deps)  # a duplicate runs first

    outcome = fn.process(letter, deps)

    assert outcome.action == "already_reported"
    assert len(publisher.messages) == 1


@pytest.mark.parametrize(
    ("bucket", "name"),
    [
        ("inbox", "gcloud/tmp/parallel_composite_uploads/part-1"),
        ("inbox", "elsewhere/voice.zip"),
        ("inbox", "datasets/notes.txt"),
        ("inbox", "datasets/"),
        ("state", "datasets/voice.zip"),
    ],
)
def test_dead_lettered_notification_of_a_non_dataset_is_ignored(
    bucket: str, name: str, records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    outcome = fn.process(intake_letter(name, bucket=bucket), deps)

    assert outcome.action == "ignored"
    assert publisher.messages == [] and records.store.objects == {}


def test_dead_lettered_work_token_is_ignored(
    records: JobRecords, publisher: RecordingPublisher, deps: Any
) -> None:
    """Work goes through Cloud Tasks now; a token left on the retired Pub/Sub work topic is dropped."""
    put(records, service_record())
    before = raw_record(records, ALICE)
    token = json.dumps({"job_id": ALICE, "seq": 3}).encode()
    letter = fn.DeadLetter.from_push(envelope(token, {"job_id": ALICE, "seq": "3", **DEAD_LETTER_ATTRIBUTES}))

    outcome = fn.process(letter, deps)

    assert outcome.action == "ignored" and "work token" in outcome.reason
    assert publisher.messages == []
    assert raw_record(records, ALICE) == before


def test_message_that_is_not_a_notification_is_ignored(publisher: RecordingPublisher, deps: Any) -> None:
    letter = fn.DeadLetter.from_push(envelope(b"not json", dict(DEAD_LETTER_ATTRIBUTES)))

    assert fn.process(letter, deps).action == "ignored"
    assert publisher.messages == []


def test_handle_logs_what_it_did(
    deps: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fn, "deps_from_env", lambda: deps)
    letter = intake_letter("datasets/voice.zip")
    event = types.SimpleNamespace(data=envelope(letter.data, {**letter.attributes, **DEAD_LETTER_ATTRIBUTES}))

    fn.handle(event)

    line = json.loads(capsys.readouterr().out)
    assert line["severity"] == "WARNING" and "reported" in line["message"]
    assert line["delivery_count"] == 10


def test_unreadable_event_is_acked_without_raising(capsys: pytest.CaptureFixture[str]) -> None:
    fn.handle(types.SimpleNamespace(data={"no": "message"}))

    assert "unreadable dead-letter event" in capsys.readouterr().out


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
