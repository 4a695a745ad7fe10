"""Work slices, intake and the HTTP edge on the local stack: `file://` buckets, the in-process bus,
the real handlers, and a fake trainer with run_job's contract (tests/factories_consumer.py)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from consumer.adapters.storage import open_store
from consumer.errors import TransientStorageError
from consumer.jobs.metadata import build_job_spec
from consumer.jobs.records import JobRecord, Lease, SourceObject, job_id_for
from consumer.local.demo import LocalStack
from consumer.work.mirror import WorkdirMirror
from consumer.work.slices import WorkToken
from rvc_core.testing import simple_dataset_zip
from tests.factories_consumer import FakeTrainer


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)


def make_stack(root: Path, trainer: FakeTrainer | None = None, **env: str) -> LocalStack:
    return LocalStack(root, env={"SLICE_SECONDS": "30", **env}, trainer=trainer or FakeTrainer())


def only_job(stack: LocalStack) -> str:
    accepted = [r for r in stack.results if r.kind == "accepted"]
    assert len(accepted) == 1
    return accepted[0].data["job_id"]


def post_token(stack: LocalStack, job_id: str, seq: int) -> Any:
    """What the task queue delivers: the token as the task's JSON body."""
    return stack.client.post("/work", data=WorkToken(job_id, seq).encode(), content_type="application/json")


def accept_only(stack: LocalStack, dataset: Path, metadata: dict[str, str]) -> str:
    """Intake without running any slice: the notification is delivered, tokens stay queued."""
    info = stack.upload(dataset, "datasets/alice.zip", metadata)
    event = {
        "bucket": "inbox",
        "name": "datasets/alice.zip",
        "generation": str(info.generation),
        "metadata": info.metadata,
    }
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//storage.googleapis.com/projects/_/buckets/inbox",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "Content-Type": "application/json",
    }
    answer = stack.client.post("/events", data=json.dumps(event), headers=headers)
    assert answer.status_code == 200
    return answer.get_json()["job_id"]


# --- the main path ---------------------------------------------------------------------------------
def test_upload_with_metadata_ends_in_one_succeeded_event(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    info = stack.upload(dataset, "datasets/alice.zip", {"model-name": "alice", "epochs": "5"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [f.kind for f in finals] == ["succeeded"]
    data = finals[0].data
    assert data["model_name"] == "alice" and data["spec"]["epochs"] == 5
    assert data["source"]["generation"] == info.generation
    store = open_store(stack.settings.models_url)
    assert all(store.stat(uri) is not None for uri in data["artifacts"].values())


def test_job_longer_than_a_slice_runs_in_several_slices(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(epochs_per_call=2)
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "7"})
    stack.run(timeout=60)
    assert [c.resumed_epoch for c in trainer.calls] == [0, 2, 4, 6]
    record = stack.services.records.get(only_job(stack))
    assert record is not None and record.status == "succeeded" and record.seq == 3


def test_latest_pointer_names_the_newest_success(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "1"})
    stack.run(timeout=60)
    store = open_store(stack.settings.models_url)
    latest, _ = store.read_bytes(f"{stack.settings.models_url}/alice/latest.json")
    assert json.loads(latest)["job_id"] == only_job(stack)


def test_a_damaged_latest_pointer_is_replaced_by_the_next_success(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    store = open_store(stack.settings.models_url)
    uri = f"{stack.settings.models_url}/alice/latest.json"
    store.write_bytes(uri, b"{half a file", content_type="application/json")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "1"})
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals()] == ["succeeded"]
    assert json.loads(store.read_bytes(uri)[0])["job_id"] == only_job(stack)


def test_next_task_is_queued_before_the_record_advances(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=1))
    seen: list[tuple[str, int]] = []  # (task name, record seq when it was created)
    create = stack.tasks.create

    def spy(name: str, body: bytes, headers: Any = None) -> bool:
        token = WorkToken.decode(body)
        record = stack.services.records.get(token.job_id)
        seen.append((name, record.seq if record else -1))
        return create(name, body, headers)

    stack.tasks.create = spy  # type: ignore[method-assign]
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "3"})
    stack.run(timeout=60)
    job_id = only_job(stack)
    assert seen == [(f"{job_id}-0", 0), (f"{job_id}-1", 0), (f"{job_id}-2", 1)]


def test_progress_is_published_per_stage_and_every_n_epochs(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=10), PROGRESS_EVERY_EPOCHS="2")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "5"})
    stack.run(timeout=60)
    progress = [
        (r.data["progress"].get("stage") or r.data["status"], r.data["progress"].get("epoch"))
        for r in stack.results
        if r.kind == "progress"
    ]
    assert progress == [
        ("queued", None),
        ("running", None),
        ("extract", None),
        ("features", None),
        ("train", 1),
        ("train", 2),
        ("train", 4),
        ("train", 5),
        ("export", None),
    ]


def test_results_carry_cloudevent_and_filter_attributes(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    stack.upload(dataset, "datasets/alice.zip", {"model-name": "alice", "epochs": "1"})
    stack.run(timeout=60)
    final = stack.finals()[0]
    attrs = final.attributes
    assert attrs["ce-specversion"] == "1.0" and attrs["ce-type"].endswith("training.succeeded")
    assert attrs["ce-subject"] == "alice" and attrs["ce-id"] and attrs["ce-source"] and attrs["ce-time"]
    assert (attrs["job_id"], attrs["model_name"], attrs["status"]) == (
        final.data["job_id"],
        "alice",
        "succeeded",
    )


def test_accepted_event_lists_unknown_metadata_keys(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "1", "colour": "blue"})
    stack.run(timeout=60)
    accepted = [r for r in stack.results if r.kind == "accepted"]
    assert accepted[0].data["unknown_metadata_keys"] == ["colour"]


# --- duplicates, supersession, stale tokens ----------------------------------------------------------
def test_duplicate_notification_trains_once(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(epochs_per_call=10)
    stack = make_stack(tmp_path / "stack", trainer)
    info = stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    for _ in range(4):
        stack.notify(info, "datasets/alice.zip")
    stack.run(timeout=60)
    assert len(stack.finals()) == 1
    assert len({c.job_dir for c in trainer.calls}) == 1
    assert len([r for r in stack.results if r.kind == "accepted"]) == 1


def post_finalize(stack: LocalStack, job_name: str = "datasets/alice.zip") -> Any:
    info = stack.inbox.stat(stack.settings.object_url("inbox", job_name))
    assert info is not None
    event = {
        "bucket": "inbox",
        "name": job_name,
        "generation": str(info.generation),
        "metadata": info.metadata,
    }
    headers = {
        "ce-specversion": "1.0", "ce-id": "2", "ce-source": "//storage.googleapis.com/projects/_/buckets/x",
        "ce-type": "google.cloud.storage.object.v1.finalized", "Content-Type": "application/json",
    }  # fmt: skip
    return stack.client.post("/events", data=json.dumps(event), headers=headers)


def forget_announcement(stack: LocalStack, job_id: str, claimed_seconds_ago: float) -> None:
    """As if the delivery that created the job were still announcing it (or died doing so)."""

    def change(r: Any) -> bool:
        r.announced, r.announcing = [], {"accepted": time.time() - claimed_seconds_ago}
        return True

    stack.services.records.update(job_id, change)


def test_duplicate_arriving_while_the_job_is_announced_is_retried_later(
    tmp_path: Path, dataset: Path
) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    forget_announcement(stack, job_id, claimed_seconds_ago=1)
    answer = post_finalize(stack)
    assert answer.status_code == 503 and answer.get_json()["outcome"] == "busy"


def test_duplicate_after_an_announcer_died_announces_the_job(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    uri = stack.settings.object_url("inbox", "datasets/alice.zip")
    stack.inbox.upload_file(dataset, uri, metadata={"epochs": "2"})
    info = stack.inbox.stat(uri)
    assert info is not None
    source = SourceObject(uri, "inbox", "datasets/alice.zip", info.generation)
    spec = asdict(build_job_spec({"model_name": "alice", "epochs": 2}, preset="tiny"))
    dead_claim = {"accepted": time.time() - 600}  # created, then its announcer died before publishing
    stack.services.records.create(
        JobRecord(job_id_for(source_key(info)), "alice", source, spec, announcing=dead_claim)
    )
    assert post_finalize(stack).get_json()["outcome"] == "duplicate"
    stack.run(timeout=60)
    assert [r.kind for r in stack.results if r.kind in ("accepted", "succeeded")] == ["accepted", "succeeded"]


def source_key(info: Any) -> str:
    return f"inbox/datasets/alice.zip#{info.generation}"


def test_reupload_supersedes_the_older_unfinished_job(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    old_job = accept_only(stack, dataset, {"epochs": "2"})
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    old_finals = stack.finals(old_job)
    assert len(old_finals) == 1 and old_finals[0].data["error"]["code"] == "superseded"
    assert old_finals[0].attributes["status"] == "superseded"
    assert [f.kind for f in stack.finals() if f.data["job_id"] != old_job] == ["succeeded"]


def test_stale_token_is_acked_without_training(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(epochs_per_call=1)
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    calls = len(trainer.calls)
    answer = post_token(stack, only_job(stack), 0)
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "stale"
    assert len(trainer.calls) == calls and len(stack.finals()) == 1


def test_token_ahead_of_the_record_is_retried_later(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    answer = post_token(stack, job_id, 1)
    assert answer.status_code == 429 and answer.get_json()["outcome"] == "ahead"


def test_token_of_a_job_leased_by_a_live_owner_is_retried_later(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer()
    stack = make_stack(tmp_path / "stack", trainer)
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    stack.services.records.update(
        job_id, lambda r: setattr(r, "lease", Lease("other", time.time() + 60)) or True
    )
    answer = post_token(stack, job_id, 0)
    assert answer.status_code in (429, 503)
    assert trainer.calls == []


def test_unknown_job_token_is_acked(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    answer = post_token(stack, "0123456789abcdef", 0)
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "unknown_job"


def test_malformed_work_delivery_is_acked(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    answer = stack.client.post("/work", data=b"{not json")
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "malformed"


# --- failures ----------------------------------------------------------------------------------------
def test_transient_failures_are_retried_and_the_job_completes(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(failures=[TransientStorageError("503"), TransientStorageError("503")])
    stack = make_stack(tmp_path / "stack", trainer, MAX_CONSECUTIVE_FAILURES="3")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals()] == ["succeeded"]
    assert stack.statuses["/work"][:2] == [503, 503]


def test_persistent_failure_fails_the_job_once_with_retryable_true(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(failures=[TransientStorageError("503")] * 10)
    stack = make_stack(tmp_path / "stack", trainer, MAX_CONSECUTIVE_FAILURES="3")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [f.kind for f in finals] == ["failed"]
    assert finals[0].data["error"]["retryable"] is True
    assert finals[0].data["error"]["code"] == "storage_unavailable"
    assert len(trainer.calls) == 3


def test_job_whose_slices_keep_dying_is_failed_after_the_limit(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer()
    stack = make_stack(tmp_path / "stack", trainer, MAX_CONSECUTIVE_FAILURES="2")
    job_id = accept_only(stack, dataset, {"epochs": "2"})

    def crashed_slice(r: Any) -> bool:  # a previous owner died mid-slice, once already before
        r.lease, r.consecutive_failures = Lease("dead-owner", time.time() - 1), 1
        return True

    stack.services.records.update(job_id, crashed_slice)
    answer = post_token(stack, job_id, 0)
    assert answer.get_json()["outcome"] == "failed"
    stack.run(timeout=60)
    finals = stack.finals(job_id)
    assert len(finals) == 1 and finals[0].data["error"]["code"] == "slice_lost"
    assert trainer.calls == []


def test_expired_lease_is_taken_over_and_the_job_resumes(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    stack.services.records.update(
        job_id, lambda r: setattr(r, "lease", Lease("dead", time.time() - 1)) or True
    )
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals(job_id)] == ["succeeded"]


def test_not_a_zip_fails_once_without_retries_and_writes_no_model(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    stack = make_stack(tmp_path / "stack", trainer)
    bad = tmp_path / "notes.zip"
    bad.write_text("not a zip at all")
    stack.upload(bad, "datasets/notes.zip", {"epochs": "2"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [(f.kind, f.data["error"]["code"]) for f in finals] == [("failed", "not_a_zip")]
    assert len(trainer.calls) == 1
    assert list((tmp_path / "stack" / "models").rglob("*.*")) == []
    # The rejected dataset's full report stays beside the record; the failed event links it.
    job_id = finals[0].data["job_id"]
    assert finals[0].data["report_uri"].endswith(f"/state/jobs/{job_id}/report.json")
    assert (tmp_path / "stack" / "state" / "jobs" / job_id / "report.json").exists()


def test_invalid_metadata_fails_at_intake_without_training(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer()
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "0"})
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "0"})  # a new generation: a second failed job
    stack.run(timeout=60)
    finals = stack.finals()
    assert [(f.kind, f.data["error"]["code"]) for f in finals] == [("failed", "invalid_metadata")] * 2
    assert "epochs" in finals[0].data["error"]["message"]
    assert trainer.calls == []


def test_redelivered_invalid_metadata_notification_reports_once(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    info = stack.upload(dataset, "datasets/alice.zip", {"sample-rate": "44100"})
    stack.notify(info, "datasets/alice.zip")
    stack.run(timeout=60)
    assert len(stack.finals()) == 1


# --- shutdown and concurrency -------------------------------------------------------------------------
def test_sigterm_stops_the_slice_and_hands_the_job_on(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(epochs_per_call=100)
    stack = make_stack(tmp_path / "stack", trainer)
    trainer.on_epoch = lambda epoch: stack.services.stop.set() if epoch == 2 else None
    job_id = accept_only(stack, dataset, {"epochs": "6"})
    answer = post_token(stack, job_id, 0)
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "advanced"
    record = stack.services.records.get(job_id)
    assert record is not None and record.seq == 1 and record.lease is None and record.progress["epoch"] == 2


def test_a_stopping_instance_refuses_new_slices(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    stack.services.stop.set()
    assert post_token(stack, job_id, 0).status_code == 503


def test_one_process_runs_one_slice_at_a_time(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    with stack.services.slices._busy:
        answer = post_token(stack, job_id, 0)
    assert answer.status_code == 429 and answer.get_json()["outcome"] == "busy"


def test_another_instance_resumes_from_the_uploaded_work_dir(tmp_path: Path, dataset: Path) -> None:
    first_trainer, second_trainer = FakeTrainer(epochs_per_call=2), FakeTrainer(epochs_per_call=2)
    first = make_stack(tmp_path / "stack", first_trainer)
    job_id = accept_only(first, dataset, {"epochs": "4"})
    assert post_token(first, job_id, 0).get_json()["outcome"] == "advanced"
    second = make_stack(tmp_path / "stack", second_trainer, WORK_ROOT=str(tmp_path / "other-scratch"))
    assert post_token(second, job_id, 1).get_json()["outcome"] == "finished"
    assert [c.resumed_epoch for c in second_trainer.calls] == [2]


# --- where a slice's time goes ------------------------------------------------------------------------
OVERHEAD_PARTS_OF_A_SLICE = ("lease", "newer_upload", "restore", "sync", "queue_next", "advance")


def test_work_answer_splits_a_slice_into_training_and_overhead(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=2, seconds_per_epoch=0.1))
    job_id = accept_only(stack, dataset, {"epochs": "5"})
    timings = post_token(stack, job_id, 0).get_json()["timings"]
    assert set(OVERHEAD_PARTS_OF_A_SLICE) <= timings.keys()
    assert 0.2 <= timings["run_job"] < timings["total"]
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]


def test_progress_publishing_counts_as_overhead_not_training(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=3), PROGRESS_EVERY_EPOCHS="1")
    job_id = accept_only(stack, dataset, {"epochs": "5"})
    publish = stack.bus.publish

    def slow_results(topic: str, data: bytes, attributes: Any) -> str:
        if "results" in topic:
            time.sleep(0.1)
        return publish(topic, data, attributes)

    stack.services.slices.deps.results.publisher.publish = slow_results  # type: ignore[method-assign]
    timings = post_token(stack, job_id, 0).get_json()["timings"]
    assert timings["progress"] >= 0.5  # extract, features and three epochs, 0.1 s each
    assert timings["run_job"] < 0.2


def test_last_slice_reports_the_model_upload_and_finalisation(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=10))
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    answer = post_token(stack, job_id, 0).get_json()
    assert answer["outcome"] == "finished"
    assert {"artifacts", "finalise"} <= answer["timings"].keys() and "sync" not in answer["timings"]


def test_finished_job_leaves_its_record_but_no_work_files(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=1))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "3"})
    stack.run(timeout=60)
    job_id = only_job(stack)
    store = open_store(stack.settings.state_url)
    names = [info.uri.rsplit("/jobs/", 1)[1] for info in store.list(f"{stack.settings.state_url}/jobs/")]
    assert names == [f"{job_id}/job.json"]
    assert not (tmp_path / "stack" / "scratch" / job_id).exists()


# --- the work-dir mirror ------------------------------------------------------------------------------
def test_sync_uploads_only_new_or_changed_files(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'state'}")
    work = tmp_path / "local" / "work"
    (work / "stages").mkdir(parents=True)
    (work / "stages" / "a.json").write_text("a")
    (work / "ckpt.json").write_text("1")
    mirror = WorkdirMirror(store, f"file://{tmp_path / 'state'}/jobs/x/work", work)
    assert mirror.sync() == 2
    assert mirror.sync() == 0
    time.sleep(0.01)
    (work / "ckpt.json").write_text("22")
    assert mirror.sync() == 1


def test_restore_matches_the_remote_state_exactly(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'state'}")
    remote = f"file://{tmp_path / 'state'}/jobs/x/work"
    source = tmp_path / "a" / "work"
    source.mkdir(parents=True)
    (source / "ckpt.json").write_text("5")
    WorkdirMirror(store, remote, source).sync()
    target = tmp_path / "b" / "work"
    target.mkdir(parents=True)
    (target / "unsynced-leftover.pt").write_text("from a crashed slice")
    WorkdirMirror(store, remote, target).restore()
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == ["ckpt.json"]
    assert (target / "ckpt.json").read_text() == "5"


def test_restore_on_the_instance_that_synced_downloads_nothing(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'state'}")
    work = tmp_path / "local" / "work"
    work.mkdir(parents=True)
    (work / "features.npy").write_bytes(b"0" * 1000)
    (work / "ckpt.json").write_text("1")
    mirror = WorkdirMirror(store, f"file://{tmp_path / 'state'}/jobs/x/work", work)
    mirror.sync()
    assert mirror.restore() == 0


def test_restore_downloads_only_what_another_instance_changed(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'state'}")
    remote = f"file://{tmp_path / 'state'}/jobs/x/work"
    here, there = tmp_path / "a" / "work", tmp_path / "b" / "work"
    here.mkdir(parents=True)
    (here / "features.npy").write_bytes(b"0" * 1000)
    (here / "ckpt.json").write_text("1")
    WorkdirMirror(store, remote, here).sync()
    WorkdirMirror(store, remote, there).restore()
    (there / "ckpt.json").write_text("22")
    WorkdirMirror(store, remote, there).sync()
    assert WorkdirMirror(store, remote, here).restore() == 1
    assert (here / "ckpt.json").read_text() == "22"


def test_sync_removes_remote_files_deleted_locally(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'state'}")
    remote = f"file://{tmp_path / 'state'}/jobs/x/work"
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    (work / "old.ckpt").write_text("1")
    mirror = WorkdirMirror(store, remote, work)
    mirror.sync()
    (work / "old.ckpt").unlink()
    mirror.sync()
    assert store.list(remote + "/") == []


# --- the other endpoints ------------------------------------------------------------------------------
def test_get_job_returns_the_record(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2", "model-name": "alice"})
    answer = stack.client.get(f"/jobs/{job_id}")
    assert answer.status_code == 200
    assert answer.get_json()["model_name"] == "alice" and answer.get_json()["status"] == "queued"


def test_get_unknown_job_is_404(tmp_path: Path) -> None:
    assert make_stack(tmp_path / "stack").client.get("/jobs/0123456789abcdef").status_code == 404


def test_malformed_event_is_acked_and_counted(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    answer = stack.client.post("/events", data=b"\x00garbage", headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert stack.client.get("/healthz").get_json()["counters"]["malformed_deliveries"] == 1


def inbox_copy(stack: LocalStack, dataset: Path) -> Path:
    """/train reads only under the local stack's root (the trust boundary): the dataset goes there."""
    target = stack.root / "inbox" / "train" / dataset.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(dataset.read_bytes())
    return target


def test_train_endpoint_runs_the_same_job_and_writes_output_zip(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    dataset = inbox_copy(stack, dataset)
    output = f"file://{tmp_path / 'stack' / 'exports'}/alice-model.zip"
    answer = stack.client.post(
        "/train",
        json={"dataset_url": f"file://{dataset}", "output_url": output, "model_name": "alice", "epochs": 3},
    )
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["status_url"] == f"/jobs/{body['job_id']}"
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals(body["job_id"])] == ["succeeded"]
    assert (tmp_path / "stack" / "exports" / "alice-model.zip").exists()


def test_train_endpoint_rejects_bad_options_at_once(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    dataset = inbox_copy(stack, dataset)
    answer = stack.client.post("/train", json={"dataset_url": f"file://{dataset}", "epochs": 99999})
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_metadata"


def test_train_endpoint_reports_a_missing_dataset(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    answer = stack.client.post("/train", json={"dataset_url": f"file://{stack.root}/inbox/nope.zip"})
    assert answer.status_code == 404


# --- the slice knows when it no longer owns the job (issue 9) ---------------------------------------
class ForgetfulTrainer(FakeTrainer):
    """Loses its checkpoint before each call, as a work dir that is never restored would."""

    def __call__(self, dataset_zip: Path, workdir: Path, *args: Any, **kwargs: Any) -> Any:
        (Path(workdir) / "train" / "checkpoint.json").unlink(missing_ok=True)
        return super().__call__(dataset_zip, workdir, *args, **kwargs)


def test_paths_with_spaces_restore_the_checkpoint(tmp_path: Path, dataset: Path) -> None:
    trainer = FakeTrainer(epochs_per_call=2)
    stack = make_stack(tmp_path / "state folder", trainer, WORK_ROOT=str(tmp_path / "work root"))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "5"})
    # Each slice on a fresh instance: the work dir comes only from the state bucket.
    scratch = tmp_path / "work root"
    real = stack.services.slices._train  # type: ignore[union-attr]

    def fresh_instance(s: Any, keeper: Any) -> Any:
        import shutil

        shutil.rmtree(scratch / s.job_id, ignore_errors=True)
        return real(s, keeper)

    stack.services.slices._train = fresh_instance  # type: ignore[union-attr,method-assign]
    stack.run(timeout=60)
    assert [c.resumed_epoch for c in trainer.calls] == [0, 2, 4]
    assert [f.kind for f in stack.finals()] == ["succeeded"]


def test_slices_without_progress_fail_the_job_with_no_progress(tmp_path: Path, dataset: Path) -> None:
    trainer = ForgetfulTrainer(epochs_per_call=2)
    stack = make_stack(tmp_path / "stack", trainer, MAX_CONSECUTIVE_FAILURES="3")
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "5"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [(f.kind, f.data["error"]["code"]) for f in finals] == [("failed", "no_progress")]
    assert len(trainer.calls) == 4  # one slice that moved, then three that did not


def test_slice_whose_lease_renewals_failed_for_a_lease_writes_nothing(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer.work.lease import LeaseKeeper

    skew = [0.0]
    trainer = FakeTrainer(epochs_per_call=2, on_epoch=lambda e: skew.__setitem__(0, 61.0))
    stack = make_stack(tmp_path / "stack", trainer, LEASE_SECONDS="60")
    stack.services.slices.deps.clock = lambda: time.time() + skew[0]  # type: ignore[union-attr]

    def unreachable(self: Any) -> None:
        raise TransientStorageError("state bucket unreachable")

    monkeypatch.setattr(LeaseKeeper, "renew", unreachable)
    job_id = accept_only(stack, dataset, {"epochs": "5"})
    answer = post_token(stack, job_id, 0)
    assert answer.status_code == 503 and answer.get_json()["outcome"] == "retry"
    record = stack.services.records.get(job_id)
    assert record is not None and record.seq == 0 and record.slices == 0
    assert list((tmp_path / "stack" / "state" / "jobs" / job_id).glob("work/**/*.*")) == []


def test_finalisation_checks_the_lease_in_the_same_compare_and_swap(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=5))
    job_id = accept_only(stack, dataset, {"epochs": "2"})

    def taken_over(epoch: int) -> None:  # another owner took the job; our keeper has not noticed
        if epoch == 2:
            stack.services.records.update(
                job_id, lambda r: setattr(r, "lease", Lease("other", time.time() + 600)) or True
            )

    stack.services.slices.deps.trainer.on_epoch = taken_over  # type: ignore[union-attr]
    answer = post_token(stack, job_id, 0)
    assert answer.get_json()["outcome"] == "lease_lost"
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "running" and record.lease.owner == "other"  # type: ignore[union-attr]
    stack.bus.run_until_idle(timeout=10)
    assert stack.finals(job_id) == []


def test_storage_error_before_training_releases_the_lease(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack")
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    records = stack.services.records

    def unreachable(model_name: str) -> Any:
        raise TransientStorageError("503")

    records.newest = unreachable  # type: ignore[method-assign]
    answer = post_token(stack, job_id, 0)
    assert answer.status_code == 503
    record = records.get(job_id)
    assert record is not None and record.lease is None and record.consecutive_failures == 1


def test_get_job_shows_the_stage_before_the_lease_is_renewed(tmp_path: Path, dataset: Path) -> None:
    seen: list[Any] = []
    stack = make_stack(tmp_path / "stack", LEASE_SECONDS="600")

    def look(epoch: int) -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            shown = stack.services.records.get(job_id).to_json()  # what GET /jobs/<id> shows
            if shown.get("progress", {}).get("stage"):
                break
            time.sleep(0.05)
        seen.append(shown)

    trainer = stack.services.slices.deps.trainer  # type: ignore[union-attr]
    trainer.on_epoch = lambda e: look(e) if e == 1 else None
    job_id = accept_only(stack, dataset, {"epochs": "2"})
    post_token(stack, job_id, 0)
    assert seen and seen[0]["progress"]["stage"] in ("extract", "features", "train")


def test_train_jobs_of_one_generation_are_superseded_in_request_order(tmp_path: Path) -> None:
    from consumer.jobs.records import JobRecords

    records = JobRecords(open_store(f"file://{tmp_path}/state"), f"file://{tmp_path}/state")
    source = SourceObject("file:///x/a.zip", "inbox", "a.zip", 7)
    # The later request has the smaller job id: job-id order would keep the earlier one.
    first = JobRecord("ffff000000000000", "alice", source, {}, created_at="2026-01-01T00:00:00.001Z")
    later = JobRecord("0000ffff00000000", "alice", source, {}, created_at="2026-01-01T00:00:00.002Z")
    for record in (first, later):
        records.create(record)
        records.claim_newest("alice", record.job_id, 7)
    assert records.newest("alice")["job_id"] == later.job_id  # type: ignore[index]
    assert records.claim_newest("alice", first.job_id, 7) is False


def test_the_upload_is_removed_once_extracted(tmp_path: Path, dataset: Path) -> None:
    from rvc_core.layout import WorkDir

    class ExtractingTrainer(FakeTrainer):
        def __call__(self, dataset_zip: Path, workdir: Path, *args: Any, **kwargs: Any) -> Any:
            marker = WorkDir(Path(workdir)).stage_marker("extract")
            if not marker.exists():
                assert Path(dataset_zip).exists()
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("{}")
            return super().__call__(dataset_zip, workdir, *args, **kwargs)

        def _prepare(self, dataset_zip: Path, workdir: Path, emit: Any) -> Any:
            return {"files_used": 1}

    stack = make_stack(tmp_path / "stack", ExtractingTrainer(epochs_per_call=1))
    job_id = accept_only(stack, dataset, {"epochs": "3"})
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "advanced"
    local = tmp_path / "stack" / "scratch" / job_id
    assert not (local / "dataset.zip").exists()
    assert json.loads((local / "dataset.json").read_text())["generation"] > 0
    assert post_token(stack, job_id, 1).get_json()["outcome"] == "advanced"
    assert not (local / "dataset.zip").exists()  # not downloaded again


# --- the slice budget leaves measured room for start-up and the upload (issue 9) ---------------------
def test_slice_budget_shrinks_when_the_measured_upload_needs_more_than_the_reserve() -> None:
    from consumer.work.budget import SliceBudget
    from consumer.work.timings import Stopwatch

    budget = SliceBudget(slice_seconds=45, dispatch_deadline=60, ready_at=0.0)
    budget.startup_seconds = 0.0
    assert budget.work_seconds(received=100.0) == 45  # nothing measured yet: SLICE_SECONDS
    slow_upload = Stopwatch()
    slow_upload.add("sync", 30.0)
    slow_upload.add("queue_next", 2.0)
    budget.record(slow_upload)
    # 60 s deadline less the 32 s the last slice needed after its work, less a 5 % margin
    assert budget.work_seconds(received=200.0) == pytest.approx(25.0)
    for _ in range(5):  # the slow upload ages out of the recent slices
        budget.record(Stopwatch())
    assert budget.work_seconds(received=300.0) == 45


def test_first_slice_of_a_cold_instance_pays_for_its_start_up() -> None:
    from consumer.work.budget import SliceBudget

    cold = SliceBudget(slice_seconds=45, dispatch_deadline=60, ready_at=10.0)
    cold.startup_seconds = 30.0  # image pull, CUDA, imports: inside the first delivery's deadline
    assert cold.work_seconds(received=12.0) == pytest.approx(60 - 32 - 3)
    assert cold.work_seconds(received=50.0) == 45  # later slices: start-up is behind us
    warm = SliceBudget(slice_seconds=45, dispatch_deadline=60, ready_at=10.0)
    warm.startup_seconds = 30.0
    assert warm.work_seconds(received=600.0) == 45  # idle a while first: the delivery did not start it
