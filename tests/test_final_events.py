"""The final event cannot be lost: bounded result sizes, the full dataset report beside the model,
a failed publish that keeps the job retryable (never "failed"), and clean-up on every path."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from consumer.adapters.storage import open_store
from consumer.errors import PublishFailed
from consumer.jobs.results import MAX_EVENT_BYTES, bounded_data, event_bytes
from consumer.local.demo import LocalStack
from rvc_core.errors import BadDataset
from rvc_core.testing import simple_dataset_zip
from tests.factories_consumer import FakeTrainer
from tests.test_slices import accept_only, make_stack, post_token

PUBSUB_MAX_BYTES = 10_000_000  # Pub/Sub's limit for one message


class StrictPublisher:
    """The local bus behind Pub/Sub's message size limit, failing the kinds in `failing` too."""

    def __init__(self, inner: Any, sizes: list[int]) -> None:
        self.inner = inner
        self.sizes = sizes
        self.failing: set[str] = set()

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        self.sizes.append(len(data))
        if len(data) > PUBSUB_MAX_BYTES:
            raise PublishFailed(f"message of {len(data)} bytes exceeds the 10 MB limit", retryable=False)
        if attributes.get("ce-type", "").rsplit(".", 1)[-1] in self.failing:
            raise PublishFailed("the topic is gone", retryable=False)
        return self.inner.publish(topic, data, attributes)


def strict(stack: LocalStack) -> StrictPublisher:
    sizes: list[int] = []
    results = stack.services.slices.deps.results  # type: ignore[union-attr]  # intake's too
    publisher = StrictPublisher(results.publisher, sizes)
    results.publisher = publisher  # type: ignore[assignment]
    return publisher


def pathological_zip(path: Path) -> Path:
    """Real audio plus 180 non-audio entries with 60 KB names: a 10.8 MB dataset report."""
    simple_dataset_zip(path, files=3, seconds=5.0)
    with zipfile.ZipFile(path, "a") as zf:
        for i in range(180):
            zf.writestr(f"{i:03d}" + "n" * 60_000 + ".txt", b"x")
    return path


class IntakeTrainer(FakeTrainer):
    """FakeTrainer whose preparation is rvc_core's real intake (extract, preprocess): its report."""

    def _prepare(self, dataset_zip: Path, workdir: Path, emit: Callable[..., None]) -> dict[str, Any]:
        from rvc_core.assets import AssetStore
        from rvc_core.jobspec import JobSpec
        from rvc_core.prepare import run_prepare

        marker = workdir / "stages" / "prepare.json"
        if marker.exists():
            return json.loads((workdir / "report.json").read_text())
        prepared = run_prepare(
            dataset_zip, workdir, JobSpec(model_name="x").prepare_config(),
            assets=AssetStore.from_option("none", {}), workers=1, until="preprocess", progress=emit,
        )  # fmt: skip
        marker.write_text("{}")
        return prepared.report.to_json()


def test_pathological_zip_gives_a_bounded_succeeded_event_and_the_full_report(tmp_path: Path) -> None:
    upload = pathological_zip(tmp_path / "upload" / "alice.zip")
    stack = make_stack(tmp_path / "stack", IntakeTrainer(epochs_per_call=5))
    publisher = strict(stack)
    stack.upload(upload, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=120)

    finals = stack.finals()
    assert [f.kind for f in finals] == ["succeeded"]
    assert max(publisher.sizes) <= MAX_EVENT_BYTES
    data = finals[0].data
    ignored = data["dataset_report"]["ignored"]
    assert len(ignored) < 180 and data["dataset_report"]["ignored_total"] == 180
    assert all(len(entry["name"]) < 5000 for entry in ignored)
    assert data["dataset_report"]["totals"]["ignored_entries"] == 180
    # The full report is report.json beside the model, and the event links to it.
    assert data["report_uri"] == data["artifacts"]["report"]
    assert data["report_uri"].endswith(f"/alice/{data['job_id']}/report.json")
    full, _ = open_store(stack.settings.models_url).read_bytes(data["report_uri"])
    report = json.loads(full)["dataset"]
    assert len(report["ignored"]) == 180 and len(report["ignored"][0]["name"]) > 60_000
    # The record keeps the summary too: it is rewritten at every lease renewal.
    record_bytes = (tmp_path / "stack" / "state" / "jobs" / data["job_id"] / "job.json").stat().st_size
    assert record_bytes < MAX_EVENT_BYTES


def test_failed_event_caps_the_error_message(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(failures=[BadDataset("x" * 1_000_000)]))
    publisher = strict(stack)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [f.kind for f in finals] == ["failed"]
    assert len(finals[0].data["error"]["message"]) < 2100
    assert max(publisher.sizes) <= MAX_EVENT_BYTES


def test_every_event_fits_the_bound_whatever_it_holds() -> None:
    huge = {
        "job_id": "j", "model_name": "m" * 100_000, "status": "running",
        "progress": {"message": "y" * 5_000_000, "losses": {f"k{i}": i for i in range(100_000)}},
        "dataset_report": {"files": [{"name": "z" * 1000}] * 100_000},
        "error": {"message": "e" * 1_000_000},
    }  # fmt: skip
    assert event_bytes(bounded_data(huge)) <= MAX_EVENT_BYTES
    small = {"job_id": "j", "status": "queued"}
    assert bounded_data(small) == small


def test_a_failing_final_publish_keeps_the_job_succeeded_and_retryable(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=5))
    publisher = strict(stack)
    publisher.failing.add("succeeded")
    job_id = accept_only(stack, dataset, {"epochs": "2"})

    first = post_token(stack, job_id, 0)
    assert first.status_code == 503 and first.get_json()["outcome"] == "retry"
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "succeeded" and record.error is None
    assert "succeeded" not in record.announced and "succeeded" not in record.announcing
    stack.bus.run_until_idle(timeout=10)
    assert stack.finals(job_id) == []
    # Work files are gone already: the model is out, only the event is missing.
    assert not (tmp_path / "stack" / "scratch" / job_id).exists()
    assert not list((tmp_path / "stack" / "state" / "jobs" / job_id).glob("work/**/*.*"))

    again = post_token(stack, job_id, 0)  # the queue retries the same task: publish is retried
    assert again.status_code == 503
    assert stack.services.records.get(job_id).status == "succeeded"  # type: ignore[union-attr]

    publisher.failing.clear()
    last = post_token(stack, job_id, 0)
    assert last.status_code == 200
    stack.bus.run_until_idle(timeout=10)
    assert [f.kind for f in stack.finals(job_id)] == ["succeeded"]
    assert post_token(stack, job_id, 0).status_code == 200
    stack.bus.run_until_idle(timeout=10)
    assert [f.kind for f in stack.finals(job_id)] == ["succeeded"]  # once


def test_redelivered_final_token_cleans_up_leftover_work_files(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "1"})
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "finished"
    # Leftovers of a finalisation cut short: local scratch and remote work files.
    scratch = tmp_path / "stack" / "scratch" / job_id / "work"
    scratch.mkdir(parents=True)
    (scratch / "ckpt.bin").write_bytes(b"x")
    remote = tmp_path / "stack" / "state" / "jobs" / job_id / "work" / "train" / "ckpt.bin"
    remote.parent.mkdir(parents=True)
    open_store(stack.settings.state_url).write_bytes(
        f"{stack.settings.state_url}/jobs/{job_id}/work/train/ckpt.bin", b"x"
    )
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "stale"
    assert not (tmp_path / "stack" / "scratch" / job_id).exists()
    assert not remote.exists()


def test_failed_and_superseded_jobs_leave_no_work_files(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=1, failures=[BadDataset("bad")]))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "3"})
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals()] == ["failed"]
    assert list((tmp_path / "stack" / "scratch").glob("*/work")) == []
    assert list((tmp_path / "stack" / "state" / "jobs").glob("*/work/**/*.*")) == []


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)
