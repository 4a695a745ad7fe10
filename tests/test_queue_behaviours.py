"""Issue 8's behaviours: work waits in a task queue, intake never waits behind a slice.

Two kinds of stack run them:
- the in-process `LocalStack` (the local queue and dispatcher, Flask's test client, the fake
  trainer): exact, fast, for behaviours 1 and 4;
- the dev stack's processes (`consumer.local.devstack.DevStack`: the Pub/Sub emulator,
  fake-gcs-server, the local queue dispatched over HTTP from this process, and the service under
  gunicorn with the fake trainer), in both topologies: role `all` in one process, and `api` +
  `worker` as two processes. Behaviours 2 and 3 run in both; 1 and 4 once more in the split one.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consumer.jobs.records import job_id_for, source_key
from consumer.jobs.results import ReceivedResult, read_result
from consumer.local.demo import LocalStack
from consumer.local.devstack import DevStack, DevStackConfig
from rvc_core.testing import simple_dataset_zip
from tests.emulators import FAKE_SERVICE_COMMAND
from tests.factories_consumer import FakeTrainer

FINAL_KINDS = ("succeeded", "failed", "cancelled")
OLD_RETRY_HORIZON = 10  # the old design's max_delivery_attempts (Terraform's default): 10 deliveries


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simple_dataset_zip(tmp_path_factory.mktemp("voice") / "voice.zip", files=1, seconds=1.0)


def assert_no_duplicate_slices(history: list[dict[str, Any]]) -> None:
    seqs = [h["seq"] for h in history]
    assert len(seqs) == len(set(seqs)), f"a seq ran twice: {seqs}"
    ordered = sorted((h["started_at"], h["ended_at"]) for h in history)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end, f"slices overlap: {ordered}"


# --- behaviour 1 and 4 on the in-process stack ------------------------------------------------------
def watch_positions(get: Callable[[str], dict[str, Any]], job_ids: list[str]) -> dict[str, list[int]]:
    """Each job's queue position now, appended to what was seen (only while it is queued)."""
    seen: dict[str, list[int]] = {}
    for job_id in job_ids:
        body = get(job_id)
        if body["status"] == "queued":
            assert body.get("queue"), f"queued job {job_id} reports no position: {body}"
            seen.setdefault(job_id, []).append(body["queue"]["position"])
    return seen


def check_positions(positions: dict[str, list[int]], later_jobs: list[str]) -> None:
    for rank, job_id in enumerate(later_jobs, start=2):
        got = positions.get(job_id, [])
        assert got, f"job {rank} was never seen queued with a position"
        assert got == sorted(got, reverse=True), f"job {rank}'s position went up: {got}"
        assert got[-1] == 1, f"job {rank} started before reaching the head of the line: {got}"
        if rank > 2:
            assert got[0] > got[-1], f"job {rank}'s position never decreased: {got}"


def test_1_six_uploads_one_slot_all_succeed_and_queued_jobs_see_their_place(
    tmp_path: Path, dataset: Path
) -> None:
    trainer = FakeTrainer(epochs_per_call=1)  # one epoch per slice: the first job needs 15 slices
    stack = LocalStack(tmp_path, trainer=trainer, slots=1, env={"PROGRESS_EVERY_EPOCHS": "1"})
    uploads = [("datasets/first.zip", {"model-name": "first", "epochs": str(OLD_RETRY_HORIZON + 5)})]
    uploads += [(f"datasets/v{i}.zip", {"model-name": f"voice{i}", "epochs": "2"}) for i in range(2, 7)]
    infos = [stack.upload(dataset, name, metadata) for name, metadata in uploads]
    job_ids = [
        job_id_for(source_key("inbox", name, info.generation))
        for (name, _), info in zip(uploads, infos, strict=True)
    ]

    stack.bus.run_until_idle(timeout=30)  # intake of all six, before any slice runs
    assert [r.kind for r in stack.results].count("accepted") == 6

    def get(job_id: str) -> dict[str, Any]:
        response = stack.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200
        return response.get_json()

    positions: dict[str, list[int]] = {}
    deadline = time.monotonic() + 120
    while not (stack.dispatcher.idle() and stack.bus.pending() == 0):
        assert time.monotonic() < deadline, f"not done in time: {stack.tasks.waiting()} tasks left"
        for job_id, seen in watch_positions(get, job_ids).items():
            positions.setdefault(job_id, []).extend(seen)
        stack.dispatcher.step()
        while stack.dispatcher._in_flight and not all(f.done() for f in stack.dispatcher._in_flight.values()):
            time.sleep(0.002)  # one slice at a time: look at the line between slices
        stack.bus.run_until_idle(timeout=30)

    finals = stack.finals()
    assert sorted(r.data["job_id"] for r in finals) == sorted(job_ids)
    assert {r.kind for r in finals} == {"succeeded"}, [(r.kind, r.data.get("error")) for r in finals]
    first = get(job_ids[0])
    assert first["slices"] > OLD_RETRY_HORIZON  # longer than the old design let the others wait
    for job_id in job_ids:
        record = get(job_id)
        assert record["status"] == "succeeded" and record.get("superseded_by") is None
        assert_no_duplicate_slices(record["history"])
    check_positions(positions, job_ids[1:])
    assert (
        429 not in stack.statuses["/work"] and 503 not in stack.statuses["/work"]
    )  # nobody waited by retrying


def test_4_task_created_twice_and_token_ahead_make_no_duplicate_slice(tmp_path: Path, dataset: Path) -> None:
    from consumer.work.tokens import WorkToken

    trainer = FakeTrainer(epochs_per_call=1)
    stack = LocalStack(tmp_path, trainer=trainer, slots=1)  # one slot: the ahead task meets the record
    info = stack.upload(dataset, "datasets/twice.zip", {"model-name": "twice", "epochs": "4"})
    job_id = job_id_for(source_key("inbox", "datasets/twice.zip", info.generation))
    stack.bus.run_until_idle(timeout=30)

    token0 = WorkToken(job_id, 0)
    created = []
    threads = [
        threading.Thread(target=lambda: created.append(stack.tasks.create(token0.task_name, token0.encode())))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert created == [False] * 4  # intake made task #0 already: every second create changes nothing
    ahead = WorkToken(job_id, 2)
    assert stack.tasks.create(ahead.task_name, ahead.encode())  # queued before its predecessor ran
    assert not stack.tasks.create(ahead.task_name, ahead.encode())

    stack.run(timeout=120)
    finals = stack.finals(job_id)
    assert [r.kind for r in finals] == ["succeeded"]
    record = stack.client.get(f"/jobs/{job_id}").get_json()
    assert record["consecutive_failures"] == 0 and record["error"] is None
    assert [h["seq"] for h in record["history"]] == [0, 1, 2, 3]
    assert_no_duplicate_slices(record["history"])
    assert [a["outcome"] for a in stack.work_answers].count("ahead") >= 1  # it was held back, not run
    assert len(trainer.calls) == 4  # one trainer call per seq: no slice ran twice
    # A task that already ran cannot be created again (its name is kept, as Cloud Tasks keeps it).
    assert not stack.tasks.create(token0.task_name, token0.encode())


# --- the dev stack's processes ----------------------------------------------------------------------
@dataclass
class ProcessStack:
    """A `DevStack` whose services run the fake trainer, driven from the test."""

    dev: DevStack
    topology: str
    results: list[ReceivedResult] = field(default_factory=list)
    _storage: Any = None

    @property
    def env(self) -> dict[str, str]:
        return self.dev.env

    @property
    def worker_role(self) -> str:
        return "worker" if self.topology == "split" else "all"

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from consumer.adapters.storage.gcs import default_client

            self._storage = default_client(self.env["STORAGE_EMULATOR_HOST"], project=self.dev.config.project)
        return self._storage

    def upload(self, path: Path, name: str, metadata: dict[str, str]) -> str:
        """Uploads to the inbox (fake-gcs-server notifies, the push reaches /events); the job id."""
        blob = self.storage.bucket(self.dev.config.inbox_bucket).blob(name)
        blob.metadata = metadata
        blob.upload_from_filename(str(path), content_type="application/zip", timeout=30)
        return job_id_for(source_key(self.dev.config.inbox_bucket, name, int(blob.generation)))

    def job(self, job_id: str, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.env['SERVICE_URL']}/jobs/{job_id}", timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def wait_job(
        self, job_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record is not None and ready(record):
                return record
            time.sleep(0.05)
        pytest.fail(f"job {job_id} not as wanted within {timeout} s: {self.job(job_id)}\n{self.logs()}")

    def fresh_slice(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The record just after a slice past the first started (so most of it is still to run)."""
        first = self.wait_job(job_id, lambda r: r["lease"] is not None and r["seq"] >= 1, timeout)
        return self.wait_job(job_id, lambda r: r["lease"] is not None and r["seq"] > first["seq"], timeout)

    def stored_record(self, job_id: str) -> dict[str, Any]:
        """The record as stored, read without the service (which may be down)."""
        blob = self.storage.bucket(self.dev.config.state_bucket).blob(f"jobs/{job_id}/job.json")
        return json.loads(blob.download_as_bytes(timeout=10))

    def collect(self, done: Callable[[list[ReceivedResult]], bool], timeout: float) -> list[ReceivedResult]:
        from consumer.adapters.messaging.admin import pull

        deadline = time.monotonic() + timeout
        while True:
            for message in pull(
                self.dev.config.project, self.env["RESULTS_SUBSCRIPTION"], timeout=1.0,
                emulator_host=self.env["PUBSUB_EMULATOR_HOST"],
            ):  # fmt: skip
                self.results.append(read_result(message.data, message.attributes))
            if done(self.results):
                return self.results
            if time.monotonic() > deadline:
                kinds = [(r.kind, r.data.get("job_id")) for r in self.results]
                pytest.fail(f"results so far {kinds}\n{self.logs()}")
            time.sleep(0.2)

    def finals(self, job_ids: list[str]) -> list[ReceivedResult]:
        return [r for r in self.results if r.kind in FINAL_KINDS and r.data["job_id"] in job_ids]

    def settle(self, job_ids: list[str], timeout: float) -> list[ReceivedResult]:
        """Waits for every job's final result, then a little longer for any duplicate."""
        self.collect(lambda _: {r.data["job_id"] for r in self.finals(job_ids)} >= set(job_ids), timeout)
        time.sleep(2.0)
        self.collect(lambda _: True, timeout=5)
        return self.finals(job_ids)

    def logs(self) -> str:
        parts = []
        for spec in self.dev.services.values():
            if spec.log_path and spec.log_path.exists():
                parts.append(f"--- {spec.role}\n{spec.log_path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


SECONDS_PER_EPOCH = 1.0  # the fake trainer's epoch: a slice of SLICE_SECONDS=2 blocks about 2 s
PROCESS_ENV = {
    "SLICE_SECONDS": "2", "LEASE_SECONDS": "3", "PROGRESS_EVERY_EPOCHS": "1", "DEVICE": "cpu",
    "FAKE_SECONDS_PER_EPOCH": str(SECONDS_PER_EPOCH),
}  # fmt: skip


@pytest.fixture(scope="module", params=["all", "split"])
def process_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessStack]:
    topology = request.param
    config = DevStackConfig(
        split=topology == "split",
        service_command=FAKE_SERVICE_COMMAND,
        service_env=PROCESS_ENV,
        service_log=True,
        dispatch_deadline_seconds=60,
        max_backoff=1.0,
    )
    dev = DevStack(config, log_dir=tmp_path_factory.mktemp(f"devstack-{topology}"))
    dev.start()
    try:
        yield ProcessStack(dev, topology)
    finally:
        dev.stop()
    assert not any(p.alive() for p in dev.processes)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def notification_push(bucket: str, name: str, generation: int, metadata: dict[str, str], size: int) -> bytes:
    """The push envelope of an OBJECT_FINALIZE notification, as Pub/Sub posts it to /events."""
    resource = {
        "kind": "storage#object", "bucket": bucket, "name": name, "generation": str(generation),
        "size": str(size), "contentType": "application/zip", "metadata": metadata,
    }  # fmt: skip
    attributes = {
        "bucketId": bucket, "objectId": name, "objectGeneration": str(generation),
        "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1",
    }  # fmt: skip
    message = {
        "data": base64.b64encode(json.dumps(resource).encode()).decode(), "attributes": attributes,
        "messageId": f"direct-{generation}", "publishTime": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/direct"}).encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@pytest.mark.emulator
def test_2_intake_and_status_answer_in_under_a_second_during_a_slice(
    process_stack: ProcessStack, dataset: Path
) -> None:
    s = process_stack
    busy = s.upload(
        dataset, f"datasets/busy-{s.topology}.zip", {"model-name": f"busy-{s.topology}", "epochs": "8"}
    )
    running = s.fresh_slice(busy)  # a slice (about 2 s, the trainer blocking) has just started

    bucket, name = s.dev.config.inbox_bucket, f"datasets/quick-{s.topology}.zip"
    blob = s.storage.bucket(bucket).blob(name)
    blob.metadata = {"model-name": f"quick-{s.topology}", "epochs": "1"}
    blob.upload_from_filename(str(dataset), content_type="application/zip", timeout=30)
    quick = job_id_for(source_key(bucket, name, int(blob.generation)))
    envelope = notification_push(bucket, name, int(blob.generation), blob.metadata, int(blob.size))
    status, intake_seconds = timed(lambda: post(f"{s.env['SERVICE_URL']}/events", envelope))
    record, status_seconds = timed(lambda: s.job(quick))
    during = s.job(busy)

    assert status in (200, 204) and intake_seconds < 1.0, (status, intake_seconds)
    assert record is not None and status_seconds < 1.0, (record, status_seconds)
    assert record["status"] in ("queued", "running", "succeeded")
    assert during is not None and during["seq"] == running["seq"] and during["lease"] is not None, (
        "the slice ended before intake and status had answered: nothing was measured during a slice"
    )
    assert during["lease"]["owner"] == running["lease"]["owner"]
    finals = s.settle([busy, quick], timeout=120)
    assert sorted(r.kind for r in finals) == ["succeeded", "succeeded"]


@pytest.mark.emulator
def test_3_worker_killed_mid_slice_resumes_on_the_next_dispatch(
    process_stack: ProcessStack, dataset: Path
) -> None:
    s = process_stack
    job_id = s.upload(
        dataset, f"datasets/kill-{s.topology}.zip", {"model-name": f"kill-{s.topology}", "epochs": "8"}
    )
    record = s.fresh_slice(job_id)
    owner_before = record["lease"]["owner"]
    time.sleep(0.5)  # well inside the slice (about 2 s)
    s.dev.kill_service(s.worker_role)
    killed = s.stored_record(job_id)
    assert killed["lease"] is not None and killed["seq"] == record["seq"], "the kill was not mid-slice"
    if s.topology == "split":  # the api lives on: status still answers while the worker is gone
        assert s.job(job_id) is not None
    s.dev.start_service(s.worker_role)

    [final] = s.settle([job_id], timeout=120)
    assert final.kind == "succeeded"
    record = s.job(job_id)
    assert record is not None
    assert_no_duplicate_slices(record["history"])
    after = [h for h in record["history"] if h["owner"] != owner_before]
    assert after and after[0]["epoch_from"] > 0, record["history"]  # resumed from the checkpoint
    assert len([r for r in s.results if r.kind == "accepted" and r.data["job_id"] == job_id]) == 1


@pytest.mark.emulator
@pytest.mark.parametrize("process_stack", ["split"], indirect=True)  # once; in-process for both
def test_1_and_4_six_uploads_one_worker_slot_with_duplicate_tasks(
    process_stack: ProcessStack, dataset: Path
) -> None:
    s = process_stack
    from consumer.work.tokens import WorkToken

    # Two epochs per slice: the first job needs more slices than the old design's retry horizon.
    names = [("first", str(2 * (OLD_RETRY_HORIZON + 1)))] + [(f"six{i}", "1") for i in range(2, 7)]
    job_ids = [s.upload(dataset, f"datasets/{n}.zip", {"model-name": n, "epochs": e}) for n, e in names]
    assert s.dev.tasks is not None
    s.wait_job(job_ids[0], lambda r: True, timeout=30)
    ahead = WorkToken(job_ids[0], 3)  # a token ahead of the record: held back until its turn
    assert s.dev.tasks.create(ahead.task_name, ahead.encode())
    positions: dict[str, list[int]] = {}
    creates: Counter[str] = Counter()
    deadline = time.monotonic() + 180
    while True:
        for job_id in job_ids:
            record = s.job(job_id)
            if record is None:
                continue
            if record["status"] == "queued" and record.get("queue"):
                positions.setdefault(job_id, []).append(record["queue"]["position"])
                # Task #0 again, from another process than intake's: of the two creates (ours may come
                # first, between the record and intake's create), one makes the task.
                token = WorkToken(job_id, 0)
                creates[job_id] += s.dev.tasks.create(token.task_name, token.encode())
        s.collect(lambda _: True, timeout=1)
        if {r.data["job_id"] for r in s.finals(job_ids)} >= set(job_ids):
            break
        assert time.monotonic() < deadline, (
            f"results so far {[(r.kind, r.data['job_id']) for r in s.results]}"
        )
        time.sleep(0.1)
    finals = s.settle(job_ids, timeout=30)
    assert max(creates.values(), default=0) <= 1, creates
    assert sorted(r.data["job_id"] for r in finals) == sorted(job_ids)
    assert {r.kind for r in finals} == {"succeeded"}
    for job_id in job_ids:
        record = s.job(job_id)
        assert record is not None and record["consecutive_failures"] == 0
        assert_no_duplicate_slices(record["history"])
    later = [j for j in job_ids[1:] if j in positions]
    assert len(later) >= 4, f"queued jobs seen with a position: {positions}"
    for job_id in later:
        got = positions[job_id]
        assert got == sorted(got, reverse=True), f"a position went up: {got}"
    assert any(got[0] > got[-1] for got in positions.values()), f"no position ever decreased: {positions}"
    ids = [r.attributes["ce-id"] for r in s.results if r.data.get("job_id") in job_ids]
    assert len(ids) == len(set(ids)), "an event was published twice"
    for job_id in job_ids:
        assert {f"{job_id}.progress.queued", f"{job_id}.progress.running"} <= set(ids)
    first = s.job(job_ids[0])
    assert first is not None and first["slices"] > OLD_RETRY_HORIZON
