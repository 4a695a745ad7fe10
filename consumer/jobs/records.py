"""The job record (`jobs/<job_id>/job.json` in the state bucket) and its compare-and-swap updates.

A record is only ever changed by read → change → write with `if_generation_match` (Cloud Storage's
`ifGenerationMatch`; the local store's equivalent). A lost race re-reads and re-applies the change, so
two instances never overwrite each other's update and a record is never half-written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from consumer.errors import NotFound, PreconditionFailed

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore

Status = Literal["queued", "running", "succeeded", "failed", "superseded", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "superseded", "cancelled"})
CAS_ATTEMPTS = 20


def source_key(bucket: str, name: str, generation: int) -> str:
    """`bucket/object#generation`: the identity of one upload, hashed by `job_id_for`."""
    return f"{bucket}/{name}#{generation}"


def job_id_for(source_key: str) -> str:
    """Short stable id of one upload (`bucket/object#generation`): the same upload, the same job."""
    return hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]


def now_iso(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SourceObject:
    uri: str  # gs://bucket/name or file:///…
    bucket: str
    name: str
    generation: int


@dataclass(frozen=True)
class Lease:
    owner: str  # instance and process holding the job
    expires_at: float  # seconds since the epoch; renewed while the slice runs


@dataclass
class JobRecord:
    job_id: str
    model_name: str
    source: SourceObject
    spec: dict[str, Any]  # JobSpec fields
    status: Status = "queued"
    stage: str = "queued"
    seq: int = 0  # the work token the job waits for
    lease: Lease | None = None
    consecutive_failures: int = 0
    slices: int = 0  # slices completed
    progress: dict[str, Any] = field(default_factory=dict)  # epoch, epochs, step, losses, eta_seconds
    artifacts: dict[str, str] = field(default_factory=dict)  # kind → URI
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset_report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {stage, code, message, retryable}
    unknown_keys: list[str] = field(default_factory=list)
    output_url: str | None = None  # POST /train's extra destination
    announced: list[str] = field(default_factory=list)  # result kinds already published
    announcing: dict[str, float] = field(default_factory=dict)  # kind → when a publisher claimed it
    superseded_by: str | None = None
    # `POST /jobs/<id>:cancel` while a slice held the lease: the slice stops at its next check.
    cancel_requested_at: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the last slices: owner, times, epochs
    created_at: str = ""
    updated_at: str = ""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}  # newer writers may add fields
        values["source"] = SourceObject(**raw["source"])
        values["lease"] = Lease(**raw["lease"]) if raw.get("lease") else None
        return cls(**values)


class JobRecords:
    """Job records and per-model pointers under one state URL."""

    def __init__(self, store: ObjectStore, state_url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state_url = state_url.rstrip("/")
        self.clock = clock

    def job_prefix(self, job_id: str) -> str:
        return f"{self.state_url}/jobs/{job_id}"

    def record_uri(self, job_id: str) -> str:
        return f"{self.job_prefix(job_id)}/job.json"

    def get(self, job_id: str) -> JobRecord | None:
        loaded = self._read(job_id)
        return None if loaded is None else loaded[0]

    def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Writes `record` if no record of that job exists; returns (the stored record, created)."""
        stamp = now_iso(self.clock)
        record.created_at = record.created_at or stamp
        record.updated_at = stamp
        try:
            self.store.write_bytes(
                self.record_uri(record.job_id),
                _encode(record),
                if_generation_match=0,
                content_type="application/json",
            )
            return record, True
        except PreconditionFailed:
            existing = self.get(record.job_id)
            if existing is None:  # deleted between the two calls: extremely unlikely, try once more
                return self.create(record)
            return existing, False

    def update(self, job_id: str, change: Callable[[JobRecord], bool]) -> JobRecord:
        """Applies `change` (which mutates the record and returns whether to write) by compare-and-swap.

        `change` may run several times, each time on a freshly read record; it must not have other side
        effects. Returns the record as stored (unchanged when `change` returned False).
        """
        for _ in range(CAS_ATTEMPTS):
            loaded = self._read(job_id)
            if loaded is None:
                raise NotFound(f"job {job_id} has no record")
            record, generation = loaded
            if not change(record):
                return record
            record.updated_at = now_iso(self.clock)
            try:
                self.store.write_bytes(
                    self.record_uri(job_id),
                    _encode(record),
                    if_generation_match=generation,
                    content_type="application/json",
                )
                return record
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"job {job_id}: {CAS_ATTEMPTS} concurrent updates in a row")

    def _read(self, job_id: str) -> tuple[JobRecord, int] | None:
        try:
            data, generation = self.store.read_bytes(self.record_uri(job_id))
        except NotFound:
            return None
        return JobRecord.from_json(json.loads(data)), generation

    # --- the newest upload of each model name (supersession) -------------------------------------
    def newest_uri(self, model_name: str) -> str:
        return f"{self.state_url}/models/{model_name}/newest.json"

    def newest(self, model_name: str) -> dict[str, Any] | None:
        """`{job_id, generation}` of the newest accepted upload of a model name."""
        try:
            data, _ = self.store.read_bytes(self.newest_uri(model_name))
        except NotFound:
            return None
        return json.loads(data)

    def claim_newest(
        self, model_name: str, job_id: str, generation: int, created_at: str | None = None
    ) -> bool:
        """Makes `job_id` the model's newest upload unless a newer one already is (`is_newer`).
        `created_at`: the job record's, when the caller holds it (else it is read)."""
        uri = self.newest_uri(model_name)
        stamp = created_at if created_at is not None else self._created_at(job_id)
        mine = {"job_id": job_id, "generation": generation, "created_at": stamp}
        payload = json.dumps(mine).encode()
        for _ in range(CAS_ATTEMPTS):
            try:
                data, current_generation = self.store.read_bytes(uri)
            except NotFound:
                data, current_generation = b"", 0
            if data:
                current = json.loads(data)
                if current["job_id"] == job_id:
                    return True
                if self.is_newer(current, mine):
                    return False
            try:
                self.store.write_bytes(
                    uri, payload, if_generation_match=current_generation, content_type="application/json"
                )
                return True
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"model {model_name}: {CAS_ATTEMPTS} concurrent updates in a row")

    def is_newer(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Whether upload `a` (`{job_id, generation, created_at?}`) is newer than `b`: the higher
        object generation; for one generation (`POST /train` jobs of the same object with other
        options) the later request (`created_at`), then the job id."""
        return self._order(a) > self._order(b)

    def _order(self, entry: dict[str, Any]) -> tuple[int, str, str]:
        created = entry.get("created_at") or self._created_at(str(entry["job_id"]))
        return int(entry["generation"]), created, str(entry["job_id"])

    def _created_at(self, job_id: str) -> str:
        record = self.get(job_id)
        return record.created_at if record is not None else ""


def _encode(record: JobRecord) -> bytes:
    return (json.dumps(record.to_json(), indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
