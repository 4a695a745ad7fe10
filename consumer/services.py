"""The services of one process, wired for its role.

`Services` holds everything the handlers need, built once at start from `Settings` (clients are
created here, never at import time) and passed to `consumer.app.create_app`.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumer.adapters.messaging import Publisher
    from consumer.adapters.storage import ObjectStore
    from consumer.adapters.tasks import TaskQueue
    from consumer.jobs.intake import Intake
    from consumer.jobs.records import JobRecords
    from consumer.jobs.waiting import WaitingLine
    from consumer.settings import Settings
    from consumer.work.slices import SliceRunner, Trainer
    from rvc_core.assets import Asset


@dataclass
class Services:
    settings: Settings
    publisher: Publisher
    store_for: Callable[[str], ObjectStore]
    records: JobRecords
    line: WaitingLine
    intake: Intake | None  # roles api and all
    slices: SliceRunner | None  # roles worker and all
    stop: threading.Event  # set on SIGTERM: the running slice stops at its next clean point
    counters: Counter[str] = field(default_factory=Counter)  # ignored and malformed deliveries, …


class StoreResolver:
    """The store serving a URI: one per `file://` root and one for all of `gs://` (one shared client)."""

    def __init__(self, open_store: Callable[[str], ObjectStore]) -> None:
        self._open = open_store
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def __call__(self, uri: str) -> ObjectStore:
        key = "gs://" if uri.startswith("gs://") else "file://"
        with self._lock:
            if key not in self._stores:
                self._stores[key] = self._open(uri)
            return self._stores[key]


def instance_owner() -> str:
    """This process's lease owner id: host, pid and a random part (a restarted process is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_services(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    open_store: Callable[[str], ObjectStore] | None = None,
    trainer: Trainer | None = None,
    tasks: TaskQueue | None = None,
    asset_manifest: Sequence[Asset] | None = None,
) -> Services:
    """Wires the service for `settings.role`. Defaults: the storage, messaging and task-queue
    adapters chosen by the settings and the real `rvc_core.job.run_job` (workers only: the api
    never imports torch); tests and the local stack pass their own publisher, stores, queue or
    trainer. With `RVC_ASSETS`/`RVC_PRETRAINED` set to a bucket URL, the trainer is wrapped to fetch
    the job's weight files into a local cache first (`consumer.work.assets`; `asset_manifest`: the
    files and checksums to expect, the real manifest by default)."""
    from consumer.jobs.intake import Intake
    from consumer.jobs.records import JobRecords
    from consumer.jobs.results import Results
    from consumer.jobs.waiting import WaitingLine
    from consumer.work.tokens import WorkQueue

    if open_store is None:
        from consumer.adapters.storage import open_store as open_adapter

        open_store = open_adapter
    if publisher is None:
        from consumer.adapters.messaging import open_publisher

        publisher = open_publisher(settings.messaging, project=settings.project)
    if tasks is None:
        from consumer.adapters.tasks import open_task_queue

        tasks = open_task_queue(
            settings.task_queue_url,
            target_url=settings.work_url or None,
            service_account=settings.tasks_service_account or None,
            audience=settings.tasks_audience or None,
            dispatch_deadline_seconds=settings.dispatch_deadline_seconds,
        )
    store_for = StoreResolver(open_store)
    records = JobRecords(store_for(settings.state_url), settings.state_url)
    results = Results(publisher, settings.results_topic, project=settings.project)
    work = WorkQueue(tasks)
    line = WaitingLine(
        store_for(settings.state_url),
        settings.state_url,
        slots=settings.worker_slots,
        slice_seconds=settings.slice_seconds,
    )
    stop = threading.Event()
    runner = None
    if settings.role in ("all", "worker"):
        from consumer.work.slices import SliceDeps, SliceRunner, default_trainer

        runner = SliceRunner(
            SliceDeps(
                settings=settings,
                records=records,
                results=results,
                work=work,
                line=line,
                store_for=store_for,
                owner=instance_owner(),
                trainer=_with_assets(trainer or default_trainer(), settings, store_for, asset_manifest),
                stop=stop,
            )
        )
    intake = Intake(settings, records, results, work, line, store_for) if settings.role != "worker" else None
    return Services(
        settings=settings,
        publisher=publisher,
        store_for=store_for,
        records=records,
        line=line,
        intake=intake,
        slices=runner,
        stop=stop,
    )


def _with_assets(
    trainer: Trainer,
    settings: Settings,
    store_for: Callable[[str], ObjectStore],
    manifest: Sequence[Asset] | None,
) -> Trainer:
    """The trainer, fetching weights from a bucket first when a setting names one (else unchanged)."""
    from consumer.work.assets import RemoteAssets, needs_remote_assets, with_local_assets

    if not needs_remote_assets(settings.rvc_assets, settings.rvc_pretrained):
        return trainer
    cache = Path(settings.work_root) / "assets"
    kwargs = {} if manifest is None else {"manifest": manifest}
    return with_local_assets(trainer, RemoteAssets(store_for, cache, **kwargs))
