"""Every delivery shape of EVENTS.md §1–2, stored as golden JSON fixtures, → one ObjectFinalized or an
Ignored with a reason. Expected values are written from the payloads, by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.edge.deliveries import Ignored, ObjectFinalized, parse_delivery
from consumer.jobs.intake import screen
from consumer.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "deliveries"
ALICE = {"epochs": "200", "model-name": "alice"}


def load(name: str) -> tuple[dict[str, str], bytes]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    body = fixture["body"]
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return fixture["headers"], raw


def parse(name: str) -> ObjectFinalized | Ignored:
    headers, body = load(name)
    return parse_delivery(headers, body)


# fixture → (bucket, object, generation, metadata, delivery shape)
FINALIZED: dict[str, tuple[str, str, int, dict[str, str] | None, str]] = {
    "eventarc_binary_finalized": (
        "inbox",
        "datasets/alice.zip",
        1732832936756275,
        ALICE,
        "cloudevent-binary",
    ),
    "eventarc_binary_numbers_charset_new_fields": (
        "inbox",
        "datasets/alice.zip",
        1732832936756275,
        ALICE,
        "cloudevent-binary",
    ),
    "eventarc_binary_without_metadata": (
        "inbox",
        "datasets/bob.zip",
        1732832936756275,
        {},
        "cloudevent-binary",
    ),
    "eventarc_structured_finalized": (
        "inbox",
        "datasets/alice.zip",
        1732832936756275,
        ALICE,
        "cloudevent-structured",
    ),
    "pubsub_push_wrapped_finalize": ("inbox", "datasets/alice.zip", 1736358966947877, ALICE, "pubsub-push"),
    "pubsub_push_wrapped_overwrite_with_delivery_attempt": (
        "inbox",
        "datasets/alice.zip",
        1736358999000001,
        {"Model_Name": "alice", "EPOCHS": "50"},
        "pubsub-push",
    ),
    "pubsub_push_payload_none": ("inbox", "datasets/alice.zip", 1736358966947877, None, "pubsub-push"),
    "pubsub_push_unwrapped": (
        "inbox",
        "datasets/alice.zip",
        1736358966947877,
        ALICE,
        "pubsub-push-unwrapped",
    ),
    "pubsub_push_unwrapped_payload_none": (
        "inbox",
        "datasets/alice.zip",
        1736358966947877,
        None,
        "pubsub-push-unwrapped",
    ),
    "eventarc_message_published": (
        "inbox",
        "datasets/alice.zip",
        1736358966947877,
        ALICE,
        "cloudevent-messagepublished",
    ),
    "fake_gcs_server_notification": (
        "inbox",
        "datasets/carol.zip",
        1764369000123456,
        {"model-name": "carol", "epochs": "3"},
        "pubsub-push",
    ),
    "background_function_finalize": (
        "inbox",
        "datasets/alice.zip",
        1732832936756275,
        ALICE,
        "background-function",
    ),
}

NOT_FINALIZE = {
    "eventarc_binary_deleted": "deleted",
    "eventarc_binary_metadata_updated": "metadataUpdated",
    "cloudevent_unrelated_type": "audit.log",
    "pubsub_push_object_delete": "OBJECT_DELETE",
    "pubsub_push_not_a_notification": "eventType",
}

MALFORMED = [
    "malformed_not_json",
    "malformed_empty_body",
    "malformed_bad_base64",
    "malformed_missing_generation",
    "malformed_json_api_without_data",
    "malformed_json_array",
]

SCREENED = {
    "gcloud_composite_part": "parallel composite upload",
    "non_zip_upload": "not a .zip",
    "outside_inbox_prefix": "outside the inbox prefix",
}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_bucket": "gs://rvc-state",
        "models_bucket": "gs://rvc-models",
        "task_queue": "projects/p/locations/us-central1/queues/rvc-work",
        "work_url": "https://rvc-trainer-1.us-central1.run.app/work",
    }
    return Settings(**{**values, **overrides})


def test_every_fixture_is_covered_by_an_expectation() -> None:
    names = {p.stem for p in FIXTURES.glob("*.json")}
    assert names == set(FINALIZED) | set(NOT_FINALIZE) | set(MALFORMED) | set(SCREENED)


@pytest.mark.parametrize("name", sorted(FINALIZED))
def test_finalize_delivery_becomes_object_finalized(name: str) -> None:
    bucket, obj, generation, metadata, delivery = FINALIZED[name]
    event = parse(name)
    assert isinstance(event, ObjectFinalized), event
    assert (event.bucket, event.name, event.generation, event.metadata, event.delivery) == (
        bucket,
        obj,
        generation,
        metadata,
        delivery,
    )


@pytest.mark.parametrize("name", sorted(NOT_FINALIZE))
def test_other_event_types_are_ignored_with_the_type_named(name: str) -> None:
    result = parse(name)
    assert isinstance(result, Ignored)
    assert not result.malformed
    assert NOT_FINALIZE[name] in result.reason


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_bodies_are_ignored_and_marked_malformed(name: str) -> None:
    result = parse(name)
    assert isinstance(result, Ignored)
    assert result.malformed
    assert result.reason


@pytest.mark.parametrize("name", sorted(SCREENED))
def test_uploads_that_are_not_training_data_are_screened_out(name: str) -> None:
    event = parse(name)
    assert isinstance(event, ObjectFinalized)
    verdict = screen(event, settings())
    assert verdict is not None and SCREENED[name] in verdict.reason


def test_training_upload_passes_the_screen() -> None:
    event = parse("eventarc_binary_finalized")
    assert isinstance(event, ObjectFinalized)
    assert screen(event, settings()) is None


def test_objects_the_service_writes_never_pass_the_screen() -> None:
    own = ObjectFinalized(bucket="rvc-models", name="datasets/alice/abc/alice.zip", generation=1, metadata={})
    verdict = screen(own, settings())
    assert verdict is not None and "own buckets" in verdict.reason


def test_state_under_a_prefix_of_the_inbox_bucket_never_passes_the_screen() -> None:
    own = ObjectFinalized(bucket="inbox", name="state/jobs/abc/work/x.zip", generation=1, metadata={})
    verdict = screen(own, settings(state_bucket="gs://inbox/state", inbox_prefix=""))
    assert verdict is not None


def test_ce_headers_are_matched_case_insensitively() -> None:
    headers, body = load("eventarc_binary_finalized")
    shouted = {k.upper() if k.lower().startswith("ce-") else k: v for k, v in headers.items()}
    event = parse_delivery(shouted, body)
    assert isinstance(event, ObjectFinalized) and event.name == "datasets/alice.zip"


def test_source_key_names_bucket_object_and_generation() -> None:
    event = parse("pubsub_push_wrapped_finalize")
    assert isinstance(event, ObjectFinalized)
    assert event.source_key == "inbox/datasets/alice.zip#1736358966947877"
