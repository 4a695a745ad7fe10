"""The work queue's rules, for both adapters: names dedupe, concurrency is bounded, any answer but
2xx is retried with bounded backoff and without limit, and a task survives its dispatcher."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from consumer.adapters.tasks import open_task_queue
from consumer.adapters.tasks.cloud import CloudTasksQueue
from consumer.adapters.tasks.local import LocalDispatcher, LocalTask, LocalTaskQueue
from consumer.errors import ConfigError, TaskQueueError
from consumer.work.tokens import WorkQueue, WorkToken

QUEUE = "projects/p/locations/us-central1/queues/rvc-work"
WORK_URL = "https://rvc-trainer-123.us-central1.run.app/work"


# --- the local queue -------------------------------------------------------------------------------
def test_a_name_is_created_once_even_after_its_task_ran(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    work = WorkQueue(queue)
    assert work.enqueue(WorkToken("a" * 16, 0)) is True
    assert work.enqueue(WorkToken("a" * 16, 0)) is False  # pending: refused
    delivered: list[str] = []
    LocalDispatcher(queue, lambda t: delivered.append(t.name) or 200).run_until_idle(timeout=5)
    assert delivered == ["a" * 16 + "-0"]
    assert work.enqueue(WorkToken("a" * 16, 0)) is False  # ran recently: refused, like Cloud Tasks
    assert queue.waiting() == 0


def test_creates_from_many_threads_make_one_task(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    created: list[bool] = []
    threads = [
        threading.Thread(target=lambda: created.append(queue.create("job-1", b"{}"))) for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert created.count(True) == 1 and queue.waiting() == 1


def test_refusals_are_retried_without_limit_and_with_bounded_backoff(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    queue.create("job-0", b"{}")
    answers = iter([429, 503, 500, 0, 429, 429, 429, 429, 429, 429, 429, 429, 200])
    dispatcher = LocalDispatcher(queue, lambda t: next(answers), min_backoff=0.001, max_backoff=0.004)
    dispatcher.run_until_idle(timeout=10)
    assert [status for _, status in dispatcher.answers][-1] == 200
    assert len(dispatcher.answers) == 13 and queue.waiting() == 0
    assert dispatcher.backoff(50) == 0.004


def test_a_delivery_that_raises_is_retried(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    queue.create("job-0", b"{}")
    calls = iter([ConnectionRefusedError("worker down"), 200])

    def deliver(task: LocalTask) -> int:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    dispatcher = LocalDispatcher(queue, deliver, min_backoff=0.001)
    dispatcher.run_until_idle(timeout=5)
    assert [s for _, s in dispatcher.answers] == [0, 200]


def test_dispatches_never_exceed_the_slots(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    for i in range(8):
        queue.create(f"job{i}-0", b"{}")
    running, peak, lock = [0], [0], threading.Lock()

    def deliver(task: LocalTask) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        return 200

    LocalDispatcher(queue, deliver, max_concurrent=3).run_until_idle(timeout=10)
    assert peak[0] == 3 and queue.waiting() == 0


def test_tasks_go_out_in_arrival_order(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    names = [f"job{i}-0" for i in range(6)]
    for name in names:
        queue.create(name, b"{}")
    order: list[str] = []
    LocalDispatcher(queue, lambda t: order.append(t.name) or 200).run_until_idle(timeout=5)
    assert order == names


def test_a_task_outlives_a_dispatcher_that_died_mid_delivery(tmp_path: Path) -> None:
    queue = LocalTaskQueue(tmp_path)
    queue.create("job-0", b'{"job_id": "x", "seq": 0}')
    assert queue.due(exclude=set())  # a dispatcher took it and died before any answer: nothing moved
    survivor = LocalTaskQueue(tmp_path)  # another process, later
    delivered: list[str] = []
    LocalDispatcher(survivor, lambda t: delivered.append(t.body) or 200).run_until_idle(timeout=5)
    assert delivered == ['{"job_id": "x", "seq": 0}']


def test_task_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalTaskQueue(tmp_path).create("../escape", b"{}")


# --- Cloud Tasks -------------------------------------------------------------------------------------
class FakeCloudTasks:
    """Stands in for CloudTasksClient.create_task; the request is checked against the real types."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.requests: list[tasks_v2.CreateTaskRequest] = []
        self.names: set[str] = set()
        self.failures = list(failures or [])

    def create_task(self, *, request: dict[str, Any], timeout: float, retry: Any) -> tasks_v2.Task:
        assert timeout > 0 and retry is None
        typed = tasks_v2.CreateTaskRequest(request)  # raises on any field the API does not have
        self.requests.append(typed)
        if self.failures:
            raise self.failures.pop(0)
        if typed.task.name in self.names:
            raise exceptions.AlreadyExists("task exists")
        self.names.add(typed.task.name)
        return typed.task


def cloud_queue(client: FakeCloudTasks) -> CloudTasksQueue:
    return CloudTasksQueue(
        client,
        QUEUE,
        target_url=WORK_URL,
        service_account="rvc-tasks@p.iam.gserviceaccount.com",
        audience=None,
        dispatch_deadline_seconds=1800,
    )


def test_cloud_task_is_a_named_http_task_with_an_oidc_token_and_the_deadline() -> None:
    client = FakeCloudTasks()
    assert WorkQueue(cloud_queue(client)).enqueue(WorkToken("0123456789abcdef", 3)) is True
    task = client.requests[0].task
    assert client.requests[0].parent == QUEUE
    assert task.name == f"{QUEUE}/tasks/0123456789abcdef-3"
    assert task.http_request.url == WORK_URL
    assert task.http_request.http_method == tasks_v2.HttpMethod.POST
    assert WorkToken.decode(task.http_request.body) == WorkToken("0123456789abcdef", 3)
    assert task.http_request.oidc_token.service_account_email == "rvc-tasks@p.iam.gserviceaccount.com"
    assert task.http_request.oidc_token.audience == "https://rvc-trainer-123.us-central1.run.app"
    assert task.dispatch_deadline.total_seconds() == 1800


def test_cloud_task_created_twice_changes_nothing() -> None:
    client = FakeCloudTasks()
    queue = cloud_queue(client)
    assert queue.create("job-0", b"{}") is True
    assert queue.create("job-0", b"{}") is False


def test_cloud_transient_errors_are_retried_and_permanent_ones_are_not() -> None:
    client = FakeCloudTasks([exceptions.ServiceUnavailable("later"), exceptions.TooManyRequests("slow")])
    assert cloud_queue(client).create("job-0", b"{}") is True
    assert len(client.requests) == 3
    missing = FakeCloudTasks([exceptions.NotFound("no such queue")])
    with pytest.raises(TaskQueueError) as raised:
        cloud_queue(missing).create("job-0", b"{}")
    assert raised.value.retryable is False and len(missing.requests) == 1


def test_the_queue_url_picks_the_adapter(tmp_path: Path) -> None:
    local = open_task_queue(
        f"file://{tmp_path}/tasks", target_url=None, service_account=None, audience=None,
        dispatch_deadline_seconds=1800,
    )  # fmt: skip
    assert isinstance(local, LocalTaskQueue)
    with pytest.raises(ConfigError):
        open_task_queue(
            "amqp://elsewhere", target_url=None, service_account=None, audience=None,
            dispatch_deadline_seconds=1800,
        )  # fmt: skip
