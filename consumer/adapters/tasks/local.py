"""A task queue in a folder, with the rules of Cloud Tasks, for the demo, the dev stack and tests.

Any process may create tasks (the api at intake, the worker after each slice); one dispatcher
delivers them. Creating is an atomic link into `pending/`, so two creates of one name (from any
processes) make one task; a task that ran leaves a tombstone in `done/` for `TOMBSTONE_SECONDS`,
so re-creating it is refused as Cloud Tasks refuses a recently used name. Tasks survive a crash of
any process: a task leaves `pending/` only when a delivery was answered 2xx.

The dispatcher delivers the due tasks oldest first (schedule time, then creation order), at most
`max_concurrent` at once, and retries any other answer after a backoff that doubles from
`min_backoff` to `max_backoff`, without limit on the number of attempts.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 3600.0  # Cloud Tasks refuses a name for about an hour after its task ran
Deliver = Callable[["LocalTask"], int]  # one delivery → its HTTP status


@dataclass(frozen=True)
class LocalTask:
    name: str
    body: str  # UTF-8 text: work tokens are JSON
    headers: dict[str, str]
    created_at: float  # seconds since the epoch
    order: int  # creation order among tasks of one instant
    attempts: int = 0  # deliveries tried so far
    schedule_at: float = 0.0  # not delivered before this time

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode()


class LocalTaskQueue:
    _counter = itertools.count()

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.done = self.root / "done"
        self.clock = clock
        for folder in (self.pending, self.done):
            folder.mkdir(parents=True, exist_ok=True)

    def create(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        _check_name(name)
        now = self.clock()
        task = LocalTask(name, body.decode(), dict(headers or {}), now, next(self._counter), 0, now)
        target = self.pending / f"{name}.json"
        temporary = self.pending / f".{name}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(asdict(task)))
        try:
            os.link(temporary, target)  # atomic and exclusive, across processes
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
        if self._recently_ran(name):  # checked after linking: a concurrent completion cannot slip by
            target.unlink(missing_ok=True)
            return False
        return True

    def due(self, exclude: set[str]) -> list[LocalTask]:
        """Tasks whose schedule time has come, in dispatch order."""
        now, tasks = self.clock(), []
        for path in self.pending.glob("*.json"):
            name = path.name.removesuffix(".json")
            if name in exclude:
                continue
            task = self._read(path)
            if task is not None and task.schedule_at <= now:
                tasks.append(task)
        return sorted(tasks, key=lambda t: (t.schedule_at, t.created_at, t.order))

    def waiting(self) -> int:
        return sum(1 for _ in self.pending.glob("*.json"))

    def complete(self, task: LocalTask) -> None:
        tombstone = self.done / task.name
        tombstone.write_text(str(self.clock()))
        (self.pending / f"{task.name}.json").unlink(missing_ok=True)
        self._drop_old_tombstones()

    def reschedule(self, task: LocalTask, delay: float) -> None:
        again = LocalTask(
            **{**asdict(task), "attempts": task.attempts + 1, "schedule_at": self.clock() + delay}
        )
        path = self.pending / f"{task.name}.json"
        temporary = self.pending / f".{task.name}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(asdict(again)))
        os.replace(temporary, path)

    def _recently_ran(self, name: str) -> bool:
        try:
            ran_at = float((self.done / name).read_text() or 0)
        except (OSError, ValueError):
            return False
        return self.clock() - ran_at < TOMBSTONE_SECONDS

    def _drop_old_tombstones(self) -> None:
        cutoff = self.clock() - TOMBSTONE_SECONDS
        for path in self.done.iterdir():
            try:
                if float(path.read_text() or 0) < cutoff:
                    path.unlink(missing_ok=True)
            except (OSError, ValueError):
                continue

    @staticmethod
    def _read(path: Path) -> LocalTask | None:
        try:
            return LocalTask(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # removed meanwhile, or being replaced
            return None


class LocalDispatcher:
    """Delivers a `LocalTaskQueue`'s tasks, like Cloud Tasks delivers a queue's."""

    def __init__(
        self,
        queue: LocalTaskQueue,
        deliver: Deliver,
        *,
        max_concurrent: int = 1,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        poll_seconds: float = 0.02,
    ) -> None:
        self.queue = queue
        self.deliver = deliver
        self.max_concurrent = max_concurrent
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.poll_seconds = poll_seconds
        self.dispatched = 0  # deliveries made
        self.answers: list[tuple[str, int]] = []  # (task name, status) of each delivery
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="tasks")
        self._in_flight: dict[str, Future[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalDispatcher:
        self._thread = threading.Thread(target=self._loop, name="task-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def run_until_idle(self, timeout: float | None = 600.0) -> int:
        """Dispatches in this thread until no task is left (or `timeout` s); returns deliveries made."""
        started = time.monotonic()
        while self.queue.waiting() or self._in_flight:
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"tasks still queued after {timeout} s")
            if not self.step():
                time.sleep(self.poll_seconds)
        return self.dispatched

    def idle(self) -> bool:
        return not self.queue.waiting() and not self._in_flight

    def step(self) -> bool:
        """Starts the due tasks that fit the free slots; True if any started."""
        with self._lock:
            self._in_flight = {n: f for n, f in self._in_flight.items() if not f.done()}
            free = self.max_concurrent - len(self._in_flight)
            if free <= 0:
                return False
            started = self.queue.due(exclude=set(self._in_flight))[:free]
            for task in started:
                self.dispatched += 1
                self._in_flight[task.name] = self._pool.submit(self._attempt, task)
            return bool(started)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    self._stop.wait(self.poll_seconds)
            except Exception:  # the dispatcher must outlive one bad task file
                logger.exception("task dispatch failed")
                self._stop.wait(self.poll_seconds)

    def _attempt(self, task: LocalTask) -> int:
        try:
            status = self.deliver(task)
        except Exception as err:  # unreachable worker, a timeout: retried like Cloud Tasks would
            logger.warning("task delivery failed", extra={"fields": {"task": task.name, "error": repr(err)}})
            status = 0
        self.answers.append((task.name, status))
        if 200 <= status < 300:
            self.queue.complete(task)
        else:
            self.queue.reschedule(task, self.backoff(task.attempts))
        return status

    def backoff(self, attempts: int) -> float:
        return min(self.max_backoff, self.min_backoff * 2 ** min(attempts, 30))


def http_deliverer(url: str, *, timeout: float) -> Deliver:
    """Delivers a task as Cloud Tasks does: POST its body to `url`, with the queue's headers."""
    import urllib.error
    import urllib.request

    def deliver(task: LocalTask) -> int:
        headers = {
            **task.headers,
            "X-CloudTasks-TaskName": task.name,
            "X-CloudTasks-TaskRetryCount": str(task.attempts),
        }
        request = urllib.request.Request(url, data=task.body_bytes, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    return deliver


def _check_name(name: str) -> None:
    # Cloud Tasks task ids: letters, digits, hyphens and underscores, at most 500 characters.
    if not name or len(name) > 500 or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"not a task name: {name!r}")
