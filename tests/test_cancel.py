"""`POST /jobs/<id>:cancel` on the local stack: a job no slice holds is cancelled by the api at once
(one `cancelled` result, never trained); a running slice stops within seconds and publishes the one
`cancelled` result; work files go; a finished job is a 409, an unknown one a 404; the job page's form
is redirected back. And the record's per-epoch loss history (`progress.history`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.jobs.records import FINAL_STATUSES
from consumer.jobs.results import EVENT_TYPES, FINAL_KINDS, final_kind, read_result, result_message
from consumer.local.demo import LocalStack
from consumer.work.progress import HISTORY_EPOCHS, appended
from rvc_core.progress import ProgressEvent
from rvc_core.testing import simple_dataset_zip
from tests.factories_consumer import FakeTrainer
from tests.test_slices import only_job, post_token

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


class EpochReportingTrainer(FakeTrainer):
    """FakeTrainer whose per-epoch event is rvc_core's end-of-epoch report (`epoch N done`, with
    the validation mel), as the real trainer sends it."""

    def __call__(self, *args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def relay(event: ProgressEvent) -> None:
            if event.stage == "train" and event.epoch:
                event = ProgressEvent(
                    stage="train", message=f"epoch {event.epoch} done", epoch=event.epoch,
                    epochs=event.epochs, step=event.step,
                    losses={**event.losses, "validation_mel": 1.0 / event.epoch},
                )  # fmt: skip
            if progress is not None:
                progress(event)

        return super().__call__(*args, progress=relay, **kwargs)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)


def make_stack(root: Path, trainer: FakeTrainer, **env: str) -> LocalStack:
    return LocalStack(root, env={"SLICE_SECONDS": "60", "LEASE_SECONDS": "30", **env}, trainer=trainer)


def finals(stack: LocalStack, job_id: str) -> list[Any]:
    return [r for r in stack.results if r.kind in FINAL_KINDS and r.data["job_id"] == job_id]


def accepted(stack: LocalStack, model: str) -> str:
    (job_id,) = [
        r.data["job_id"] for r in stack.results if r.kind == "accepted" and r.data["model_name"] == model
    ]
    return job_id


def work_files(stack: LocalStack, job_id: str) -> list[Path]:
    folder = stack.root / "state" / "jobs" / job_id / "work"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def cancel(stack: LocalStack, job_id: str, **kwargs: Any) -> Any:
    return stack.client.post(f"/jobs/{job_id}:cancel", **kwargs)


def running(stack: LocalStack) -> threading.Thread:
    """`stack.run()` in a thread (the dispatcher delivers /work there)."""
    thread = threading.Thread(target=stack.run, kwargs={"timeout": 120}, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- the protocol ------------------------------------------------------------------------------------
def test_cancelled_is_a_final_status_with_its_own_event_type() -> None:
    assert "cancelled" in FINAL_STATUSES and "cancelled" in FINAL_KINDS
    assert EVENT_TYPES["cancelled"] == "dev.rvc-trainer.training.cancelled"


# --- not leased: the api cancels at once --------------------------------------------------------------
def test_a_queued_job_behind_another_is_cancelled_at_once_and_never_runs(
    tmp_path: Path, dataset: Path
) -> None:
    trainer = FakeTrainer(epochs_per_call=1000, seconds_per_epoch=0.05)
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/first.zip", {"model-name": "first", "epochs": "40"})
    stack.upload(dataset, "datasets/second.zip", {"model-name": "second", "epochs": "40"})
    stack.bus.run_until_idle(timeout=30)
    second = accepted(stack, "second")
    assert (stack.root / "state" / "queue" / "waiting").exists()

    answer = cancel(stack, second)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["status"] == "cancelled"
    stack.bus.run_until_idle(timeout=30)
    # The final event is out before any task ran.
    (final,) = finals(stack, second)
    assert final.kind == "cancelled" and final.attributes["ce-type"].endswith(".training.cancelled")
    assert final.attributes["status"] == "cancelled" and final.data["error"]["code"] == "cancelled"
    assert not any(p.name.endswith(second) for p in (stack.root / "state" / "queue").rglob("*"))

    stack.run(timeout=60)
    assert all(Path(c.job_dir).name != second for c in trainer.calls)  # never trained
    assert len(finals(stack, second)) == 1
    assert [f.kind for f in finals(stack, accepted(stack, "first"))] == ["succeeded"]
    record = stack.services.records.get(second)
    assert record is not None and record.status == "cancelled" and record.announced.count("cancelled") == 1
    assert not work_files(stack, second)


def test_a_job_between_slices_is_cancelled_by_the_api_and_its_work_files_go(
    tmp_path: Path, dataset: Path
) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=2))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "10"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)
    assert post_token(stack, job_id, 0).status_code == 200  # one slice: the work dir is uploaded
    assert work_files(stack, job_id)

    assert cancel(stack, job_id).status_code == 200
    stack.bus.run_until_idle(timeout=30)
    assert [f.kind for f in finals(stack, job_id)] == ["cancelled"]
    assert not work_files(stack, job_id)
    # Its pending token finds the job final: dropped, the final event not repeated.
    assert post_token(stack, job_id, 1).get_json()["outcome"] == "stale"
    stack.run(timeout=30)
    assert len(finals(stack, job_id)) == 1


# --- leased: the slice stops at its next check ----------------------------------------------------------
def test_a_running_job_stops_within_seconds_with_one_cancelled_event(tmp_path: Path, dataset: Path) -> None:
    trainer = EpochReportingTrainer(epochs_per_call=10_000, seconds_per_epoch=0.1)
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2000"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)
    thread = running(stack)

    def trained_some() -> bool:
        record = stack.services.records.get(job_id)
        return record is not None and len((record.progress or {}).get("history") or []) >= 3

    wait_for(trained_some)
    asked = time.monotonic()
    answer = cancel(stack, job_id)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    assert answer.get_json()["outcome"] == "requested"
    assert cancel(stack, job_id).status_code == 202  # asking again while it stops changes nothing

    wait_for(lambda: bool(finals(stack, job_id)), timeout=15)
    took = time.monotonic() - asked
    assert took < 5.0, f"the slice stopped {took:.1f} s after the cancel"
    thread.join(30)
    assert not thread.is_alive()
    (final,) = finals(stack, job_id)
    assert final.kind == "cancelled"
    assert final.data["progress"]["epoch"] >= 3 and "history" not in final.data["progress"]
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "cancelled" and record.lease is None
    assert record.history[-1]["outcome"] == "cancelled"
    history = record.progress["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert set(history[0]["losses"]) == {"mel", "validation_mel"}
    assert not work_files(stack, job_id)
    assert not (stack.root / "scratch" / job_id).exists()
    assert all(a["outcome"] != "advanced" for a in stack.work_answers)
    assert [a["outcome"] for a in stack.work_answers] == ["cancelled"]

    again = cancel(stack, job_id)
    assert again.status_code == 409
    assert again.get_json() == {
        "error": {"code": "already_final", "message": f"job {job_id} already cancelled"},
        "status": "cancelled",
    }


def test_a_cancel_asked_just_before_the_slice_advances_ends_the_job_there(
    tmp_path: Path, dataset: Path
) -> None:
    """The flag lands after the keeper's last look: the advance sees it and cancels instead."""
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=2))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "10"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)

    def flag(r: Any) -> bool:
        r.cancel_requested_at = "now"
        return True

    trainer = stack.services.slices.deps.trainer  # type: ignore[union-attr]

    def trainer_then_flag(*args: Any, **kwargs: Any) -> Any:
        done = trainer(*args, **kwargs)
        stack.services.records.update(job_id, flag)
        return done

    stack.services.slices.deps.trainer = trainer_then_flag  # type: ignore[union-attr]
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "cancelled"
    stack.run(timeout=30)  # token 1 was queued before the advance: it is dropped
    assert [f.kind for f in finals(stack, job_id)] == ["cancelled"]


def test_a_first_slice_that_finds_the_cancel_flag_ends_the_job_cancelled(
    tmp_path: Path, dataset: Path
) -> None:
    """The flag is set but the job not finalised (the api died in between): its first slice, which
    starts the job, cancels it there with the one final event instead of failing."""
    trainer = FakeTrainer(epochs_per_call=2)
    stack = make_stack(tmp_path / "stack", trainer)
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "10"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)

    def flag(r: Any) -> bool:
        r.cancel_requested_at = "now"
        return True

    stack.services.records.update(job_id, flag)
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "cancelled"
    stack.run(timeout=30)
    assert [f.kind for f in finals(stack, job_id)] == ["cancelled"]
    assert not trainer.calls
    assert "started" not in [r.kind for r in stack.results if r.data.get("job_id") == job_id]


# --- answers ---------------------------------------------------------------------------------------------
def test_cancel_twice_is_a_409_that_says_so_and_an_unknown_job_a_404(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer())
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "4"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)
    assert cancel(stack, job_id).status_code == 200
    second = cancel(stack, job_id)
    assert second.status_code == 409
    assert second.get_json()["error"]["code"] == "already_final"
    assert second.get_json()["status"] == "cancelled"
    stack.bus.run_until_idle(timeout=30)
    assert len(finals(stack, job_id)) == 1

    for unknown in ("0123456789abcdef", "not-a-job"):
        answer = cancel(stack, unknown)
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "not_found"


def test_a_finished_job_is_a_409_naming_its_status(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=5))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "2"})
    stack.run(timeout=60)
    job_id = only_job(stack)
    answer = cancel(stack, job_id)
    assert answer.status_code == 409
    assert answer.get_json() == {
        "error": {"code": "already_final", "message": f"job {job_id} already succeeded"},
        "status": "succeeded",
    }
    assert [f.kind for f in finals(stack, job_id)] == ["succeeded"]


def test_the_job_pages_form_is_redirected_back_to_the_page(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer())
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "4"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)
    page = stack.client.get(f"/jobs/{job_id}", headers=HTML).get_data(as_text=True)
    assert f'action="/jobs/{job_id}:cancel"' in page

    # What a browser sends for the form: an empty urlencoded body, HTML preferred.
    answer = cancel(stack, job_id, headers=HTML, content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 303 and answer.headers["Location"].endswith(f"/jobs/{job_id}")
    followed = stack.client.get(answer.headers["Location"], headers=HTML).get_data(as_text=True)
    assert "cancelled" in followed and ":cancel" not in followed
    # A second post of the form (the back button) lands on the page too.
    again = cancel(stack, job_id, data={}, content_type="application/x-www-form-urlencoded")
    assert again.status_code == 303
    assert cancel(stack, "0123456789abcdef", headers=HTML).status_code == 404
    # A command-line client posting an empty form body but asking for JSON gets JSON.
    as_client = cancel(
        stack,
        job_id,
        headers={"Accept": "application/json"},
        content_type="application/x-www-form-urlencoded",
    )
    assert as_client.status_code == 409 and as_client.get_json()["status"] == "cancelled"


# --- everything that maps a final status to its result ---------------------------------------------------
def test_every_final_status_maps_to_one_final_kind(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", FakeTrainer())
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "4"})
    stack.bus.run_until_idle(timeout=30)
    record = stack.services.records.get(only_job(stack))
    assert record is not None
    expected = {
        "succeeded": "succeeded", "failed": "failed", "superseded": "failed", "cancelled": "cancelled",
    }  # fmt: skip
    assert set(expected) == set(FINAL_STATUSES)
    for status, kind in expected.items():
        record.status = status  # type: ignore[assignment]
        assert final_kind(record) == kind
        message = result_message(final_kind(record), record, project="p")
        assert read_result(message.data, message.attributes).kind == kind


# --- the loss history ----------------------------------------------------------------------------------
def test_history_keeps_one_entry_per_finished_epoch_the_last_200() -> None:
    history: list[dict[str, Any]] = []
    for epoch in range(1, 251):
        history = appended(history, epoch, {"g_mel": 1.0 / epoch})
    assert len(history) == HISTORY_EPOCHS == 200
    assert history[0]["epoch"] == 51 and history[-1]["epoch"] == 250
    # A slice resumed from an earlier checkpoint trains epochs again: they replace the old entries.
    again = appended(history, 240, {"g_mel": 9.0})
    assert again[-1] == {"epoch": 240, "losses": {"g_mel": 9.0}} and len(again) == 190


def test_history_is_written_where_progress_is_and_survives_slices(tmp_path: Path, dataset: Path) -> None:
    stack = make_stack(tmp_path / "stack", EpochReportingTrainer(epochs_per_call=2))
    stack.upload(dataset, "datasets/alice.zip", {"epochs": "5"})
    stack.bus.run_until_idle(timeout=30)
    job_id = only_job(stack)
    assert post_token(stack, job_id, 0).status_code == 200
    record = stack.services.records.get(job_id)
    assert record is not None
    assert [h["epoch"] for h in record.progress["history"]] == [1, 2]
    stack.run(timeout=60)
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "succeeded"
    assert [h["epoch"] for h in record.progress["history"]] == [1, 2, 3, 4, 5]
    assert record.progress["history"][4]["losses"]["validation_mel"] == pytest.approx(0.2)
    # Progress events carry the latest numbers, never the history.
    progress_events = [r for r in stack.results if r.kind == "progress" and r.data.get("progress")]
    assert progress_events and all("history" not in r.data["progress"] for r in progress_events)


# --- the dead-letter function -----------------------------------------------------------------------------
def test_the_dead_letter_function_publishes_a_cancelled_jobs_result_as_cancelled() -> None:
    """A cancelled job whose result never went out: the function sends `cancelled`, once."""
    from consumer.jobs.records import JobRecords
    from consumer.jobs.results import Results
    from tests import test_dead_letter as dl

    records = JobRecords(dl.MemoryStore(), dl.STATE)  # type: ignore[arg-type]
    publisher = dl.RecordingPublisher()
    deps = dl.fn.Deps(records=records, results=Results(publisher, dl.RESULTS_TOPIC, project=dl.PROJECT))
    error = {"stage": "train", "code": "cancelled", "message": "cancelled on request", "retryable": False}
    dl.put(records, dl.service_record(status="cancelled", error=error, lease=None))

    assert dl.fn.process(dl.intake_letter("datasets/alice.zip"), deps).action == "reported"
    assert dl.fn.process(dl.intake_letter("datasets/alice.zip"), deps).action == "already_reported"
    assert [r.kind for r in publisher.results()] == ["cancelled"]
