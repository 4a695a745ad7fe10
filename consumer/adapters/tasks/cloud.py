"""Cloud Tasks (google-cloud-tasks): one HTTP task per work token, named so a repeat is refused.

Each task POSTs its body to the worker's `/work` with an OIDC token minted for the tasks service
account (the creator needs `iam.serviceAccounts.actAs` on it) and carries the dispatch deadline the
slice budget was derived from. `ALREADY_EXISTS` means the task was created before, or ran within
the last hour or so: the create changed nothing, which is what a repeated create must do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumer.adapters.retry import PUBLISH_POLICY, RetryPolicy, call_with_retry, is_transient
from consumer.errors import TaskQueueError

JSON_HEADERS = {"Content-Type": "application/json"}


def cloud_tasks_client() -> Any:
    from google.cloud import tasks_v2

    return tasks_v2.CloudTasksClient()


class CloudTasksQueue:
    def __init__(
        self,
        client: Any,
        queue_path: str,
        *,
        target_url: str,
        service_account: str | None,
        audience: str | None,
        dispatch_deadline_seconds: float,
        policy: RetryPolicy = PUBLISH_POLICY,
    ) -> None:
        self.client = client
        self.queue_path = queue_path
        self.target_url = target_url
        self.service_account = service_account
        # Cloud Run accepts its own URL as the audience; the path is not part of it.
        self.audience = audience or _origin(target_url)
        self.dispatch_deadline_seconds = dispatch_deadline_seconds
        self.policy = policy

    def task(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The task as the API takes it (a dict of `tasks_v2.Task` fields)."""
        http_request: dict[str, Any] = {
            "url": self.target_url,
            "http_method": "POST",
            "headers": {**JSON_HEADERS, **dict(headers or {})},
            "body": body,
        }
        if self.service_account:
            http_request["oidc_token"] = {
                "service_account_email": self.service_account,
                "audience": self.audience,
            }
        return {
            "name": f"{self.queue_path}/tasks/{name}",
            "http_request": http_request,
            "dispatch_deadline": {"seconds": int(self.dispatch_deadline_seconds)},
        }

    def create(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        from google.api_core import exceptions

        task = self.task(name, body, headers)

        def create_once(timeout: float) -> bool:
            try:
                # The client's own retry is off: call_with_retry owns retries and their budget.
                self.client.create_task(
                    request={"parent": self.queue_path, "task": task}, timeout=timeout, retry=None
                )
            except exceptions.AlreadyExists:
                return False
            return True

        try:
            return call_with_retry(create_once, self.policy, what=f"create task {name}")
        except Exception as err:
            raise TaskQueueError(f"could not create task {name}: {err}", retryable=is_transient(err)) from err


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
