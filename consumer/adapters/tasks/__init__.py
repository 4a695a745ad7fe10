"""The work queue: Cloud Tasks in production, a folder-backed queue on one machine.

Both follow the same rules: a task has a name, and creating a name that exists (or ran recently)
changes nothing and says so; dispatches are bounded in concurrency; a delivery answered with
anything but 2xx is retried with bounded backoff, forever. Waiting in the queue is never failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from consumer.errors import ConfigError

if TYPE_CHECKING:
    from consumer.adapters.tasks.cloud import CloudTasksQueue
    from consumer.adapters.tasks.local import LocalTaskQueue

CLOUD_QUEUE_PREFIX = "projects/"


class TaskQueue(Protocol):
    def create(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        """Queues one HTTP task. True if created; False if a task of that name exists or ran
        recently (nothing changed). Raises TaskQueueError when the queue cannot be reached."""
        ...


def open_task_queue(
    url: str,
    *,
    target_url: str | None,
    service_account: str | None,
    audience: str | None,
    dispatch_deadline_seconds: float,
) -> CloudTasksQueue | LocalTaskQueue:
    """`projects/P/locations/L/queues/Q`: Cloud Tasks (HTTP tasks to `target_url` with an OIDC token
    of `service_account`); `file:///DIR`: the local folder-backed queue."""
    if url.startswith(CLOUD_QUEUE_PREFIX):
        from consumer.adapters.tasks.cloud import CloudTasksQueue, cloud_tasks_client

        if not target_url:
            raise ConfigError("a Cloud Tasks queue needs WORK_URL, the worker's /work URL")
        return CloudTasksQueue(
            cloud_tasks_client(),
            url,
            target_url=target_url,
            service_account=service_account,
            audience=audience,
            dispatch_deadline_seconds=dispatch_deadline_seconds,
        )
    if url.startswith("file:///"):
        from pathlib import Path

        from consumer.adapters.tasks.local import LocalTaskQueue

        return LocalTaskQueue(Path(url.removeprefix("file://")))
    raise ConfigError(f"a task queue is projects/P/locations/L/queues/Q or file:///DIR, got {url!r}")
