"""Consumer speed on the local stacks: intake latency and the overhead of training in slices.

    python bench/consumer.py [--stack local|dev|both] [--deliveries 200] [--slices 8]
                             [--slice-seconds 5] [--epochs 30] [--json]

(a) Intake: `--deliveries` wrapped Pub/Sub pushes of distinct OBJECT_FINALIZE notifications
    (JSON_API_V1, EVENTS.md §2), POSTed to /events one after another after a few untimed ones;
    p50/p90/p99 of the time from sending a request to reading its answer. Each one makes a job:
    a record written by compare-and-swap, work token #0 and `accepted` published.
    local: the in-process LocalStack (file:// buckets, the local bus) through Flask's test client.
    dev:   the emulator dev stack (Pub/Sub emulator, fake-gcs-server, the service as a subprocess,
           exactly `python -m consumer serve`): HTTP POSTs on one keep-alive connection, as Pub/Sub's
           push client sends them; no push subscription, so only the service's handling is timed.
(b) Slice overhead: one job on a generated 18 s dataset, the real pipeline (tiny preset, random
    networks, CPU), run slice by slice with the bench posting each work token to /work as a push
    subscription would. Each answer's `timings` (consumer.work.slices.SLICE_PARTS) splits the slice
    into `run_job` and the rest; overhead = total - run_job, also as a share of a 480 s slice.
    The first slice also downloads the upload; the last uploads the model instead of the work dir.
    Also shown: `edge` (the HTTP round trip beyond the slice's own total: routing, JSON) and the
    work-dir files and KiB each slice uploaded to the state bucket.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRODUCTION_SLICE_SECONDS = 480.0  # the default SLICE_SECONDS, for a 600 s ack deadline
WARMUP_DELIVERIES = 5  # untimed: first requests import modules and open connections
PUSH_USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"


# --- what a push subscription sends ---------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def push_envelope(data: bytes, attributes: Mapping[str, str], message_id: str, subscription: str) -> bytes:
    """The body Pub/Sub POSTs for one message on a wrapped push subscription."""
    published = _now()
    message = {
        "attributes": dict(attributes),
        "data": base64.b64encode(data).decode("ascii"),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": published,
        "publish_time": published,
    }
    return json.dumps({"message": message, "subscription": subscription}).encode()


def finalize_push(
    bucket: str, name: str, generation: int, size: int, metadata: Mapping[str, str], message_id: str
) -> bytes:
    """A Cloud Storage OBJECT_FINALIZE notification (JSON_API_V1) as the intake subscription pushes it."""
    stamp = _now()
    resource = {
        "kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "name": name, "bucket": bucket,
        "generation": str(generation), "metageneration": "1", "contentType": "application/zip",
        "size": str(size), "md5Hash": "2MJk97vPNuLBcW1nghxIww==", "crc32c": "6yY44A==",
        "timeCreated": stamp, "updated": stamp, "metadata": dict(metadata),
    }  # fmt: skip
    attributes = {
        "bucketId": bucket, "objectId": name, "objectGeneration": str(generation),
        "eventType": "OBJECT_FINALIZE", "eventTime": stamp, "payloadFormat": "JSON_API_V1",
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
    }  # fmt: skip
    subscription = "projects/rvc-bench/subscriptions/rvc-intake-push"
    return push_envelope(json.dumps(resource).encode(), attributes, message_id, subscription)


def work_push(job_id: str, seq: int, message_id: str) -> bytes:
    from consumer.work.slices import WorkToken

    token = WorkToken(job_id, seq)
    attributes = {"job_id": job_id, "seq": str(seq)}
    return push_envelope(token.encode(), attributes, message_id, "projects/rvc-bench/subscriptions/rvc-work")


PUSH_HEADERS = {"Content-Type": "application/json", "User-Agent": PUSH_USER_AGENT}


# --- the two stacks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Uploaded:
    bucket: str
    name: str
    generation: int
    size: int  # bytes


class Stack(Protocol):
    name: str
    inbox_bucket: str

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """POSTs a push body to the service; returns (HTTP status, JSON answer)."""
        ...

    def get(self, path: str) -> dict[str, Any]: ...

    def upload(self, path: Path, name: str, metadata: Mapping[str, str]) -> Uploaded: ...

    def work_files(self, job_id: str) -> dict[str, tuple[int, int]]:
        """The job's work-dir mirror in the state bucket: name → (generation, size in bytes)."""
        ...


class LocalTarget:
    """LocalStack: file:// buckets under a temporary folder, the local bus, the real handlers."""

    name = "local"
    inbox_bucket = "inbox"

    def __init__(self, root: Path, service_env: Mapping[str, str]) -> None:
        from consumer.local.demo import LocalStack

        self.stack = LocalStack(root, env=dict(service_env))

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        response = self.stack.client.post(path, data=body, headers=PUSH_HEADERS)
        return response.status_code, response.get_json()

    def get(self, path: str) -> dict[str, Any]:
        return dict(self.stack.client.get(path).get_json())

    def upload(self, path: Path, name: str, metadata: Mapping[str, str]) -> Uploaded:
        uri = self.stack.settings.object_url(self.inbox_bucket, name)
        self.stack.inbox.upload_file(path, uri, content_type="application/zip", metadata=dict(metadata))
        info = self.stack.inbox.stat(uri)
        assert info is not None
        return Uploaded(self.inbox_bucket, name, info.generation, info.size)

    def work_files(self, job_id: str) -> dict[str, tuple[int, int]]:
        records = self.stack.services.records
        store = self.stack.services.store_for(records.state_url)
        return _listing(store, f"{records.job_prefix(job_id)}/work/")


class DevTarget:
    """The emulator dev stack with the service as a subprocess, nothing pushing to it but us."""

    name = "dev"

    def __init__(self, stack: Any) -> None:
        from consumer.adapters.storage.gcs import GcsStore, default_client

        self.env = stack.env
        self.inbox_bucket = stack.config.inbox_bucket
        storage_url, project = self.env["STORAGE_EMULATOR_HOST"], self.env["GOOGLE_CLOUD_PROJECT"]
        self.client = default_client(storage_url, project=project)
        self.store = GcsStore(client_factory=lambda: self.client)
        url = urlsplit(self.env["SERVICE_URL"])
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        return self._request("POST", path, body)

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None)[1]

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        for attempt in (1, 2):  # gunicorn may close an idle keep-alive connection: reconnect once
            if self._connection is None:
                self._connection = http.client.HTTPConnection(*self.address, timeout=900)
            try:
                headers = PUSH_HEADERS if body is not None else {}
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def upload(self, path: Path, name: str, metadata: Mapping[str, str]) -> Uploaded:
        blob = self.client.bucket(self.inbox_bucket).blob(name)
        blob.metadata = dict(metadata)
        blob.upload_from_filename(str(path), content_type="application/zip", timeout=60)
        return Uploaded(self.inbox_bucket, name, int(blob.generation), int(blob.size))

    def work_files(self, job_id: str) -> dict[str, tuple[int, int]]:
        return _listing(self.store, f"{self.env['STATE_URL'].rstrip('/')}/jobs/{job_id}/work/")


def _listing(store: Any, prefix: str) -> dict[str, tuple[int, int]]:
    return {info.uri[len(prefix) :]: (info.generation, info.size) for info in store.list(prefix)}


@contextlib.contextmanager
def open_target(name: str, root: Path, service_env: Mapping[str, str]) -> Iterator[Stack]:
    if name == "local":
        yield LocalTarget(root / "local", service_env)
        return
    from consumer.local.devstack import DevStack, DevStackConfig

    config = DevStackConfig(
        project="rvc-bench", push_subscriptions=False, service_env=dict(service_env), service_log=True
    )
    stack = DevStack(config, log_dir=root / "dev")
    stack.start()
    try:
        yield DevTarget(stack)
    finally:
        stack.stop()


# --- (a) intake latency ---------------------------------------------------------------------------
@dataclass
class IntakeResult:
    deliveries: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    outcomes: dict[str, int]


def measure_intake(target: Stack, deliveries: int) -> IntakeResult:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    base_generation = time.time_ns() // 1000
    for i in range(WARMUP_DELIVERIES + deliveries):
        name = f"datasets/bench-{i:05d}.zip"
        metadata = {"model-name": f"bench{i:05d}", "epochs": "10"}
        body = finalize_push(target.inbox_bucket, name, base_generation + i, 1_829_906, metadata, str(i))
        started = time.perf_counter()
        status, answer = target.post("/events", body)
        elapsed = time.perf_counter() - started
        if i < WARMUP_DELIVERIES:
            continue
        latencies.append(elapsed * 1000)
        outcome = f"{status} {answer.get('outcome')}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return IntakeResult(
        deliveries=deliveries,
        p50_ms=cuts[49],
        p90_ms=cuts[89],
        p99_ms=cuts[98],
        max_ms=max(latencies),
        mean_ms=statistics.fmean(latencies),
        outcomes=outcomes,
    )


# --- (b) slice overhead ---------------------------------------------------------------------------
@dataclass
class SliceRow:
    seq: int
    outcome: str
    http_seconds: float  # the POST as the bench saw it
    total: float  # the slice as the service measured it
    run_job: float
    overhead: float  # total - run_job
    parts: dict[str, float]
    epochs: int  # epochs trained in the slice
    files_uploaded: int  # work-dir files whose generation changed in the state bucket
    kib_uploaded: float

    @property
    def overhead_share_of_production_slice(self) -> float:
        return 100 * self.overhead / PRODUCTION_SLICE_SECONDS


@dataclass
class SliceResult:
    rows: list[SliceRow] = field(default_factory=list)

    def steady(self) -> list[SliceRow]:
        """Slices that are neither the first (dataset download, preparation) nor the last (export)."""
        return [r for r in self.rows if r.seq > 0 and r.outcome == "advanced"]


def measure_slices(
    target: Stack, dataset: Path, *, epochs: int, max_slices: int, log: Callable[[str], None]
) -> SliceResult:
    metadata = {"model-name": "slices", "epochs": str(epochs)}
    uploaded = target.upload(dataset, "datasets/slices.zip", metadata)
    body = finalize_push(
        uploaded.bucket, uploaded.name, uploaded.generation, uploaded.size, metadata, "slices-intake"
    )
    status, answer = target.post("/events", body)
    if status != 200 or answer.get("outcome") != "accepted":
        raise RuntimeError(f"intake did not accept the dataset: {status} {answer}")
    job_id = answer["job_id"]
    result = SliceResult()
    before = target.work_files(job_id)
    for seq in range(max_slices):
        started = time.perf_counter()
        status, answer = target.post("/work", work_push(job_id, seq, f"work-{seq}"))
        http_seconds = time.perf_counter() - started
        after = target.work_files(job_id)
        changed = [name for name, entry in after.items() if before.get(name) != entry]
        before = after
        last = (target.get(f"/jobs/{job_id}").get("history") or [{}])[-1]
        timings = dict(answer.get("timings") or {})
        total, run_job = timings.pop("total", http_seconds), timings.get("run_job", 0.0)
        row = SliceRow(
            seq=seq,
            outcome=str(answer.get("outcome")),
            http_seconds=http_seconds,
            total=total,
            run_job=run_job,
            overhead=total - run_job,
            parts={k: v for k, v in timings.items() if k != "run_job"},
            epochs=int(last.get("epoch_to") or 0) - int(last.get("epoch_from") or 0),
            files_uploaded=len(changed),
            kib_uploaded=sum(after[name][1] for name in changed) / 1024,
        )
        result.rows.append(row)
        log(f"  slice {seq}: {row.outcome}, {row.total:.2f} s, overhead {row.overhead:.3f} s")
        if row.outcome != "advanced":
            break
    return result


# --- reporting ------------------------------------------------------------------------------------
def intake_table(results: Mapping[str, IntakeResult]) -> str:
    lines = [f"{'stack':<6} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}  outcomes"]
    for name, r in results.items():
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r.outcomes.items()))
        lines.append(
            f"{name:<6} {r.deliveries:>5} {r.p50_ms:>8.1f} {r.p90_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.max_ms:>8.1f} {r.mean_ms:>8.1f}  {outcomes}"
        )
    return "\n".join(lines)


def slice_table(results: Mapping[str, SliceResult]) -> str:
    from consumer.work.slices import SLICE_PARTS

    seen = {p for s in results.values() for r in s.rows for p in r.parts}
    parts = [p for p in SLICE_PARTS if p in seen]
    header = [
        "stack", "seq", "outcome", "epochs", "total", "run_job", "overhead", "%480s", *parts, "other",
        "edge", "files", "KiB",
    ]  # fmt: skip
    rows = [header]
    for name, result in results.items():
        for r in result.rows:
            other = r.overhead - sum(r.parts.values())
            rows.append(
                [
                    name, str(r.seq), r.outcome, str(r.epochs), f"{r.total:.3f}", f"{r.run_job:.3f}",
                    f"{r.overhead:.3f}", f"{r.overhead_share_of_production_slice:.3f}",
                    *(f"{r.parts[p]:.3f}" if p in r.parts else "-" for p in parts),
                    f"{other:.3f}", f"{r.http_seconds - r.total:.3f}", str(r.files_uploaded),
                    f"{r.kib_uploaded:.0f}",
                ]
            )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def summary(results: Mapping[str, SliceResult]) -> dict[str, dict[str, float]]:
    """Per stack: the mean and worst overhead of the steady slices, in seconds and % of 480 s."""
    out = {}
    for name, result in results.items():
        steady = result.steady() or result.rows
        overheads = [r.overhead for r in steady]
        out[name] = {
            "steady_slices": len(steady),
            "mean_overhead_s": statistics.fmean(overheads),
            "max_overhead_s": max(overheads),
            "mean_overhead_pct_of_480s": 100 * statistics.fmean(overheads) / PRODUCTION_SLICE_SECONDS,
            "max_overhead_pct_of_480s": 100 * max(overheads) / PRODUCTION_SLICE_SECONDS,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack", choices=("local", "dev", "both"), default="both")
    p.add_argument("--deliveries", type=int, default=200, help="timed /events deliveries per stack")
    p.add_argument("--slices", type=int, default=8, help="slices of the one job, at most")
    p.add_argument("--slice-seconds", type=float, default=5.0, help="SLICE_SECONDS of the service")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the job")
    p.add_argument("--no-slices", action="store_true", help="measure intake only")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)

    from rvc_core.testing import simple_dataset_zip

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    service_env = {
        "SLICE_SECONDS": str(args.slice_seconds),
        "TRAIN_PRESET": "tiny",
        "RVC_ASSETS": "none",
        "RVC_PRETRAINED": "none",
        "DEVICE": "cpu",
        "PROGRESS_EVERY_EPOCHS": "1",  # the most progress publishing a job can do
    }
    intake: dict[str, IntakeResult] = {}
    slices: dict[str, SliceResult] = {}
    stacks = ("local", "dev") if args.stack == "both" else (args.stack,)
    with tempfile.TemporaryDirectory(prefix="rvc-bench-consumer-") as tmp:
        root = Path(tmp)
        dataset = simple_dataset_zip(root / "voice.zip", files=3, seconds=6.0)
        for name in stacks:
            log(f"{name}: starting")
            with open_target(name, root, service_env) as target:
                log(f"{name}: intake, {args.deliveries} deliveries")
                intake[name] = measure_intake(target, args.deliveries)
                if not args.no_slices:
                    log(f"{name}: slices of one job")
                    slices[name] = measure_slices(
                        target, dataset, epochs=args.epochs, max_slices=args.slices, log=log
                    )
    print("intake latency: POST /events of a wrapped finalize push, ms (goal: p50 < 50)")
    print(intake_table(intake))
    if slices:
        print(
            f"\nslice overhead: seconds outside run_job per /work slice (SLICE_SECONDS="
            f"{args.slice_seconds:g}, tiny preset, CPU; %480s = overhead as a share of a production "
            f"slice; goal < 5)\n{slice_table(slices)}"
        )
        for name, s in summary(slices).items():
            print(
                f"{name}: steady slices {s['steady_slices']:.0f}, overhead mean {s['mean_overhead_s']:.3f} s "
                f"({s['mean_overhead_pct_of_480s']:.3f} % of 480 s), max {s['max_overhead_s']:.3f} s "
                f"({s['max_overhead_pct_of_480s']:.3f} %)"
            )
    if args.json:
        out = {
            "intake": {k: asdict(v) for k, v in intake.items()},
            "slices": {k: [asdict(r) for r in v.rows] for k, v in slices.items()},
            "slice_summary": summary(slices) if slices else {},
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
