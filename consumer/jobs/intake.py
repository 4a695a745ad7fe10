"""Intake: a finalized upload (or a `POST /train` request) → a job record → work token #0 → `accepted`.

Idempotent: the job id is a hash of `bucket/object#generation`, the record is created only if absent,
and the record remembers which results went out, so a notification delivered five times makes one
job. A bad metadata value still makes a record (status `failed`) so its one `failed` result is
published once and `GET /jobs/<id>` explains it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from consumer.edge.deliveries import Ignored, ObjectFinalized
from consumer.edge.locations import (
    check_dataset_url,
    check_output_url,
    output_bucket_problem,
)
from consumer.errors import DATASET_TOO_LARGE, INVALID_REQUEST, InvalidMetadata, NotFound
from consumer.jobs.metadata import build_job_spec, requested_spec
from consumer.jobs.records import JobRecord, JobRecords, SourceObject, job_id_for, source_key
from consumer.jobs.results import ResultKind, Results, claim_announcement, mark_announced
from consumer.jobs.uploads import model_name_hint, why_not_an_upload
from consumer.jobs.waiting import WaitingLine
from consumer.logs import log
from consumer.work.artifacts import BASE_SPEC_KEYS, latest_uri, read_latest
from consumer.work.tokens import WorkQueue, WorkToken

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.settings import Settings

logger = logging.getLogger(__name__)

# Keys of a /train body that describe where data lives rather than how to train.
TRAIN_LOCATION_KEYS = ("dataset_url", "output_url")


@dataclass(frozen=True)
class IntakeResult:
    outcome: Literal["accepted", "duplicate", "ignored", "rejected", "busy"]
    job_id: str | None = None
    reason: str = ""
    error: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "job_id": self.job_id, "reason": self.reason}
        if self.error:
            out["error"] = self.error
        return out


def screen(event: ObjectFinalized, settings: Settings) -> Ignored | None:
    """The upload filters (consumer.jobs.uploads) with this service's inbox and buckets."""
    reason = why_not_an_upload(
        event.bucket,
        event.name,
        inbox_prefix=settings.inbox_prefix,
        own_buckets=(settings.state_url, settings.models_url),
        object_url=settings.object_url(event.bucket, event.name),
    )
    inbox = settings.inbox_bucket_name
    if reason is None and inbox and event.bucket != inbox:
        reason = f"not the inbox bucket {inbox} (INBOX_BUCKET)"
    return None if reason is None else Ignored(f"{event.source_key}: {reason}")


class Intake:
    def __init__(
        self,
        settings: Settings,
        records: JobRecords,
        results: Results,
        work: WorkQueue,
        line: WaitingLine,
        store_for: Callable[[str], ObjectStore],
    ) -> None:
        self.settings = settings
        self.records = records
        self.results = results
        self.work = work
        self.line = line
        self.store_for = store_for

    def accept_upload(self, event: ObjectFinalized) -> IntakeResult:
        ignored = screen(event, self.settings)
        if ignored is not None:
            return IntakeResult("ignored", reason=ignored.reason)
        uri = self.settings.object_url(event.bucket, event.name)
        metadata = event.metadata
        if metadata is None:  # payload format NONE: the notification carried no object resource
            info = self.store_for(uri).stat(uri)
            if info is None:
                return IntakeResult("ignored", reason=f"{event.source_key}: the object no longer exists")
            metadata = info.metadata
            size = info.size if event.size is None else event.size
        else:
            size = event.size
            if size is None:  # a delivery shape without the size: ask storage, before any work starts
                info = self.store_for(uri).stat(uri)
                size = None if info is None else info.size
        source = SourceObject(uri=uri, bucket=event.bucket, name=event.name, generation=event.generation)
        refused = too_large(size, self.settings.max_dataset_bytes)
        return self._open(job_id_for(event.source_key), source, metadata, output_url=None, refused=refused)

    def accept_request(self, body: Mapping[str, Any]) -> IntakeResult:
        """`POST /train {dataset_url, output_url, model_name, epochs, …}`. Bad input is `rejected` at once
        (the caller is waiting for the answer) and makes no job."""
        # The trust boundary (consumer.edge.locations): every refusal here, before a job exists.
        nulls = sorted(str(k) for k, v in body.items() if v is None and k != "output_url")
        if nulls:
            return _rejected(INVALID_REQUEST, f"{', '.join(nulls)}: null is not a value; leave the key out")
        dataset_url = body.get("dataset_url")
        output_url = body.get("output_url")
        problem = check_dataset_url(dataset_url, self.settings)
        if problem:
            return _rejected(INVALID_REQUEST, problem)
        assert isinstance(dataset_url, str)
        options = {k: v for k, v in body.items() if k not in TRAIN_LOCATION_KEYS}
        object_name = dataset_url.rstrip("/").rsplit("/", 1)[-1]
        try:
            fields = requested_spec(options, object_name=object_name).fields
            spec = self._resolve_base(build_job_spec(fields, preset=self.settings.train_preset))
        except InvalidMetadata as err:
            return IntakeResult("rejected", reason=err.message, error=err.as_dict())
        if output_url is not None:
            problem = check_output_url(output_url, self.settings, spec.model_name)
            if problem:
                return _rejected(INVALID_REQUEST, problem)
        info = self.store_for(dataset_url).stat(dataset_url)
        if info is None:
            return _rejected(NotFound.code, f"dataset_url {dataset_url} does not exist")
        refused = too_large(info.size, self.settings.max_dataset_bytes)
        if refused:
            return IntakeResult("rejected", reason=refused["message"], error=refused)
        if output_url is not None:
            problem = output_bucket_problem(self.store_for(output_url), output_url, self.settings)
            if problem:
                return _rejected(INVALID_REQUEST, problem)
        # The same request for the same object generation is the same job; other options, another job.
        request_key = json.dumps({"spec": _spec_dict(spec), "output_url": output_url}, sort_keys=True)
        job_id = job_id_for(f"{source_key(info.bucket, info.name, info.generation)}|train|{request_key}")
        source = SourceObject(uri=dataset_url, bucket=info.bucket, name=info.name, generation=info.generation)
        return self._open(job_id, source, options, output_url=None if output_url is None else str(output_url))

    def _open(
        self,
        job_id: str,
        source: SourceObject,
        metadata: Mapping[str, Any],
        *,
        output_url: str | None,
        refused: dict[str, Any] | None = None,
    ) -> IntakeResult:
        record = self._new_record(job_id, source, metadata, output_url, refused=refused)
        # The new record carries the claim to announce it: a duplicate running alongside waits.
        record.announcing[_due_result(record)] = time.time()
        record, created = self.records.create(record)
        announced = self._announce(record, claimed=created)
        if announced is None:
            log(
                logger,
                logging.INFO,
                "intake busy: a duplicate delivery is announcing this job",
                job_id=job_id,
            )
            return IntakeResult("busy", job_id, reason="another delivery of this upload is being handled")
        outcome: Literal["accepted", "duplicate"] = "accepted" if created else "duplicate"
        log(logger, logging.INFO, f"intake {outcome}", job_id=job_id, source=source.uri, status=record.status)
        if announced.status == "failed" and announced.error:
            return IntakeResult(outcome, job_id, reason=announced.error["message"], error=announced.error)
        return IntakeResult(outcome, job_id)

    def _new_record(
        self,
        job_id: str,
        source: SourceObject,
        metadata: Mapping[str, Any],
        output_url: str | None,
        *,
        refused: dict[str, Any] | None = None,
    ) -> JobRecord:
        if refused is not None:  # refused before any work (a dataset too large): failed, reported once
            return JobRecord(
                job_id=job_id,
                model_name=model_name_hint(metadata, source.name),
                source=source,
                spec={},
                status="failed",
                stage="intake",
                error=refused,
                output_url=output_url,
            )
        try:
            requested = requested_spec(metadata, object_name=source.name)
            spec = self._resolve_base(build_job_spec(requested.fields, preset=self.settings.train_preset))
        except InvalidMetadata as err:
            return JobRecord(
                job_id=job_id,
                model_name=model_name_hint(metadata, source.name),
                source=source,
                spec={},
                status="failed",
                stage="intake",
                error=err.as_dict(),
                output_url=output_url,
            )
        return JobRecord(
            job_id=job_id,
            model_name=spec.model_name,
            source=source,
            spec=_spec_dict(spec),
            unknown_keys=list(requested.unknown_keys),
            output_url=output_url,
        )

    def _resolve_base(self, spec: Any) -> Any:
        """`base-model=<name>`: the spec with the G/D pair of that model's latest success
        (`MODELS/<name>/latest.json`). `InvalidMetadata` naming the problem when there is none, it
        has no pair, or its sample rate, version or preset differ from this job's."""
        name = spec.base_model
        if name is None:
            return spec
        accepted = "a model with a successful job here, of the same sample rate, version and preset"
        uri = latest_uri(self.settings.models_url, name)
        latest, _ = read_latest(self.store_for(uri), uri)
        if latest is None:
            raise InvalidMetadata(
                f"base-model {name!r}: no successful job of that model ({uri} does not exist or is "
                "not a latest.json this service wrote)",
                field="base-model",
                accepted=accepted,
            )
        job_id = str(latest.get("job_id", "?"))
        artifacts = latest.get("artifacts") or {}
        if not artifacts.get("G") or not artifacts.get("D"):
            raise InvalidMetadata(
                f"base-model {name!r}: its latest success (job {job_id}) has no G_<n>.pth / D_<n>.pth "
                "checkpoint pair (it was trained before continue training existed); train it again",
                field="base-model",
                accepted=accepted,
            )
        base = latest.get("spec")
        if not isinstance(base, dict):  # a latest.json written before it carried the spec
            record = self.records.get(job_id)
            base = record.spec if record is not None else {}
        mismatches = [
            f"{key} {base.get(key)!r} (base) vs {getattr(spec, key)!r} (this job)"
            for key in BASE_SPEC_KEYS
            if base.get(key) != getattr(spec, key)
        ]
        if mismatches:
            raise InvalidMetadata(
                f"base-model {name!r} (job {job_id}) does not match this job: {'; '.join(mismatches)}",
                field="base-model",
                accepted=accepted,
            )
        return replace(spec, base_g=str(artifacts["G"]), base_d=str(artifacts["D"]))

    def _announce(self, record: JobRecord, *, claimed: bool) -> JobRecord | None:
        """What a new job owes the world, once: `failed` for refused metadata; else the newest-upload
        pointer, its place in the waiting line, `accepted`, `queued` and work task #0. Each step is
        safe to repeat (a redelivery after a crash): results keep their ids, the task its name.
        None: a duplicate delivery is doing it right now."""
        due = _due_result(record)
        if due in record.announced:
            return record
        if not claimed:
            verdict, record = claim_announcement(self.records, record.job_id, due)
            if verdict == "done":
                return record
            if verdict == "busy":
                return None
        if due == "accepted":
            self.records.claim_newest(
                record.model_name, record.job_id, record.source.generation, record.created_at
            )
            self.line.enter(record)  # before the task: its first slice takes the job out of the line
            self.results.publish(due, record)
            position = self.line.position(record)
            queue = {"queue": position.as_json()} if position else {}
            self.results.publish("progress", record, extra=queue, extra_id="queued")
            self.work.enqueue(WorkToken(record.job_id, 0))
        else:
            self.results.publish(due, record)
        return mark_announced(self.records, record.job_id, due)


def _due_result(record: JobRecord) -> ResultKind:
    return "failed" if record.status == "failed" else "accepted"


def _spec_dict(spec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


def too_large(size: int | None, limit: int) -> dict[str, Any] | None:
    """The `dataset_too_large` error of an upload over `MAX_DATASET_BYTES`, naming the limit; else None."""
    if size is None or size <= limit:
        return None
    message = (
        f"the dataset is {_size(size)} ({size} bytes); this service accepts at most {_size(limit)} "
        f"(MAX_DATASET_BYTES={limit}): its scratch space lives in the instance's memory"
    )
    return {"stage": "intake", "code": DATASET_TOO_LARGE, "message": message, "retryable": False}


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _rejected(code: str, message: str) -> IntakeResult:
    return IntakeResult(
        "rejected",
        reason=message,
        error={"stage": "intake", "code": code, "message": message, "retryable": False},
    )
