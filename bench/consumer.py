"""Consumer speed on the in-process local stack: intake, slice overhead, the work queue, switches.

    python bench/consumer.py [--parts intake,slices,queue,switch] [--deliveries 200]
                             [--slice-seconds 5] [--epochs 30]
                             [--jobs 6] [--slots 1 3] [--slice-time 1.0] [--runner pool|shared]
                             [--switch-mib 450] [--json]

Everything runs in one process on `consumer.local.demo.LocalStack` (file:// buckets, the local
bus, the folder-backed task queue and its dispatcher). The emulator dev stack is not measured: it
still has the Pub/Sub work topic and is being rewritten for the task queue.

(a) intake: `--deliveries` wrapped Pub/Sub pushes of distinct OBJECT_FINALIZE notifications
    (JSON_API_V1, EVENTS.md section 2) POSTed to /events one after another, after a few untimed
    ones; p50/p90/p99 from sending a request to reading its answer. Each one makes a job: a record
    written by compare-and-swap, the waiting-line marker, work task #0 and `accepted` published.
    Measured idle, and while a slice runs on a worker thread (`busy-sleep`: the slice sleeps, as a
    GPU-bound one mostly waits; `busy-spin`: the slice holds the GIL in pure Python, the worst case
    for role `all`, where intake and training share one process).
(b) slices: one job on a generated 18 s dataset, the real pipeline (tiny preset, random networks,
    CPU), delivered by the local dispatcher. Each /work answer's `timings`
    (consumer.work.slices.SLICE_PARTS) splits the slice into `run_job` and the rest; overhead =
    total - run_job, also as a share of a 480 s slice.
(c) queue: `--jobs` uploads at once onto `--slots` worker slots with a fake trainer whose slices
    take `--slice-time` s each (sleeping); job j needs S_j slices (lengths differ). Per job: the wait
    from upload to its first slice's start. Overall: makespan against sum(S_j * T) / K, and
    dispatches per slice (dispatcher deliveries / slices that ran). `--runner pool` gives each slot
    its own worker instance (role worker, its own scratch folder, as Cloud Run instances with
    concurrency 1; the dispatcher's delivery goes to a random free one); `--runner shared` is
    LocalStack as it is: K concurrent deliveries into one process with one SliceRunner.
(d) switch: one job whose work dir holds `--switch-mib` MiB (synthetic: 200 stage-output files of
    20 KiB and checkpoint files G.pth/D.pth, rewritten each slice, as a full-preset run does), its
    slices routed to two worker instances A A B B A A. A slice on the instance that ran the one
    before restores nothing; one on the other instance downloads what changed (the checkpoint) or,
    the first time there, everything. `restore` seconds of both kinds, with the local file store
    (a local disk copy: a lower bound for Cloud Storage).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRODUCTION_SLICE_SECONDS = 480.0  # a slice budget of the order production runs (1800 s deadline: 1500)
WARMUP_DELIVERIES = 5  # untimed: first requests import modules and open connections
PUSH_USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
PUSH_HEADERS = {"Content-Type": "application/json", "User-Agent": PUSH_USER_AGENT}
MiB = 1 << 20


# --- what a push subscription sends ---------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def push_envelope(data: bytes, attributes: Mapping[str, str], message_id: str, subscription: str) -> bytes:
    """The body Pub/Sub POSTs for one message on a wrapped push subscription."""
    import base64

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


# --- the stack, and worker instances beside it ----------------------------------------------------
def new_stack(root: Path, env: Mapping[str, str], *, trainer: Any = None, slots: int = 1) -> Any:
    from consumer.local.demo import LocalStack

    return LocalStack(root, env=dict(env), trainer=trainer, slots=slots)


class Poster:
    """POSTs to one Flask app through a test client of its own (one per thread: LocalStack's
    `client` is shared by the bus and the dispatcher's threads)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.client = stack.client.application.test_client()
        self.inbox_bucket = "inbox"

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        response = self.client.post(path, data=body, headers=PUSH_HEADERS)
        return response.status_code, response.get_json()


class WorkerPool:
    """K worker instances (role worker, own scratch folder and lease owner) sharing the stack's
    buckets, bus and task queue; `deliver` is the dispatcher's delivery: it goes to a free instance,
    as Cloud Run routes a request to an instance with a free slot (concurrency 1)."""

    def __init__(
        self,
        stack: Any,
        count: int,
        trainer: Any,
        *,
        route: Callable[[Any], int] | None = None,
        seed: int = 1,
    ) -> None:
        from consumer.app import create_app
        from consumer.services import build_services

        self.stack = stack
        self.route = route
        self.rng = random.Random(seed)
        self.clients = []
        for i in range(count):
            settings = replace(stack.settings, role="worker", work_root=str(stack.root / f"instance-{i}"))
            services = build_services(settings, publisher=stack.bus, trainer=trainer, tasks=stack.tasks)
            self.clients.append(create_app(services, handle_sigterm=False).test_client())
        self.free = list(range(count))
        self.lock = threading.Lock()
        self.deliveries: list[dict[str, Any]] = []  # task, instance, status, http seconds, answer

    def deliver(self, task: Any) -> int:
        with self.lock:
            wanted = self.route(task) if self.route else None
            if wanted is None and self.free:
                wanted = self.rng.choice(self.free)
            if wanted is None or wanted not in self.free:
                return 429  # no free instance: the queue retries
            self.free.remove(wanted)
        started = time.perf_counter()
        try:
            headers = {**task.headers, "X-CloudTasks-TaskName": task.name}
            response = self.clients[wanted].post("/work", data=task.body_bytes, headers=headers)
        finally:
            with self.lock:
                self.free.append(wanted)
        answer = response.get_json() or {}
        self.stack.statuses["/work"].append(response.status_code)
        self.stack.work_answers.append(answer)
        self.deliveries.append(
            {"task": task.name, "instance": wanted, "status": response.status_code,
             "http_seconds": time.perf_counter() - started, "answer": answer}
        )  # fmt: skip
        return response.status_code


def use_dispatcher(stack: Any, deliver: Callable[[Any], int], slots: int) -> Any:
    """Replaces the stack's dispatcher with one delivering through `deliver`."""
    from consumer.adapters.tasks.local import LocalDispatcher

    stack.dispatcher.stop(wait=False)
    stack.dispatcher = LocalDispatcher(
        stack.tasks, deliver, max_concurrent=slots, min_backoff=0.02, max_backoff=0.5
    )
    return stack.dispatcher


# --- a trainer whose slices take a fixed time -----------------------------------------------------
@dataclass
class FixedTrainer:
    """`run_job`'s contract with a fixed cost: each call trains one epoch of `seconds` and pauses
    (so a job of `epochs` E takes E slices); the first call writes stage outputs, every call
    rewrites the checkpoint (`checkpoint_bytes` split into G.pth and D.pth, 1:2 as RVC's are).
    `mode`: "sleep" (GIL free, like a GPU-bound step) or "spin" (pure Python, holds the GIL).
    While `hold` is set, a call keeps training until it is cleared (intake under load)."""

    seconds: float = 1.0
    mode: str = "sleep"
    checkpoint_bytes: int = 0
    stage_files: int = 0
    stage_file_bytes: int = 0
    hold: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    calls: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self,
        dataset_zip: Path,
        workdir: Path,
        outdir: Path,
        spec: Any,
        env: Any,
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[Any], None] | None = None,
    ) -> Any:
        from rvc_core.atomic import write_json
        from rvc_core.job import JobProgress

        began = time.time()
        workdir = Path(workdir)
        checkpoint = workdir / "train" / "checkpoint.json"
        epoch = json.loads(checkpoint.read_text())["epoch"] if checkpoint.exists() else 0
        marker = workdir / "stages" / "prepare.json"
        if not marker.exists():
            for i in range(self.stage_files):
                _write_bytes(workdir / "stages" / "features" / f"{i:04d}.npy", self.stage_file_bytes)
            write_json(marker, {"files_used": 1})
        self.started.set()
        self._train(should_stop)
        epoch += 1
        if self.checkpoint_bytes:
            _write_bytes(workdir / "train" / "G.pth", self.checkpoint_bytes // 3)
            _write_bytes(workdir / "train" / "D.pth", self.checkpoint_bytes - self.checkpoint_bytes // 3)
        write_json(checkpoint, {"epoch": epoch})
        with self._lock:
            self.calls.append(
                {"job": workdir.parent.name, "epoch": epoch, "start": began, "end": time.time()}
            )
        numbers = {"epoch": epoch, "epochs": spec.epochs, "step": epoch, "losses": {"mel": 1.0 / epoch}}
        if epoch < spec.epochs:
            return JobProgress(status="paused", stage="train", **numbers)
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        files = {"pth": outdir / f"{spec.model_name}.pth", "index": outdir / f"{spec.model_name}.index"}
        for path in files.values():
            path.write_bytes(b"model")
        return JobProgress(
            status="finished", stage="done", artifacts=files, metrics={"epochs": epoch}, **numbers
        )

    def _train(self, should_stop: Callable[[], bool] | None) -> None:
        end = time.perf_counter() + self.seconds
        while self.hold.is_set() or time.perf_counter() < end:
            if should_stop is not None and should_stop():
                return
            if self.mode == "spin":
                sum(range(2000))  # tens of microseconds of pure Python holding the GIL
            elif self.hold.is_set():
                time.sleep(0.01)
            else:
                time.sleep(max(0.0, min(0.01, end - time.perf_counter())))


_BLOCK = os.urandom(MiB)


def _write_bytes(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        left = size
        while left > 0:
            fh.write(_BLOCK[: min(left, MiB)])
            left -= MiB
    os.replace(tmp, path)


def tiny_zip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("voice.wav", b"RIFF" + bytes(40))
    return path


def fake_env(slice_budget: float) -> dict[str, str]:
    return {
        "SLICE_SECONDS": str(slice_budget),
        "DISPATCH_DEADLINE_SECONDS": str(min(1800.0, max(15.0, slice_budget * 2))),
        "PROGRESS_EVERY_EPOCHS": "1",
        "LEASE_SECONDS": "60",
    }


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


def measure_intake(target: Poster, deliveries: int, tag: str = "bench") -> IntakeResult:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    base_generation = time.time_ns() // 1000
    for i in range(WARMUP_DELIVERIES + deliveries):
        name = f"datasets/{tag}-{i:05d}.zip"
        metadata = {"model-name": f"{tag}{i:05d}", "epochs": "10"}
        body = finalize_push(target.inbox_bucket, name, base_generation + i, 1_829_906, metadata, f"{tag}{i}")
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


def measure_intake_idle(root: Path, deliveries: int) -> IntakeResult:
    stack = new_stack(root, {}, trainer=FixedTrainer())
    return measure_intake(Poster(stack), deliveries, tag="idle")


def measure_intake_busy(root: Path, deliveries: int, mode: str) -> IntakeResult:
    """Intake while one slice runs on a worker thread: the dispatcher and the bus deliver in the
    background, the main thread posts uploads to the role-all app (as the default topology: one
    process takes both)."""
    trainer = FixedTrainer(seconds=0.0, mode=mode)
    stack = new_stack(root, fake_env(1000.0), trainer=trainer)
    trainer.hold.set()
    stack.upload(tiny_zip(root / "long.zip"), "datasets/long.zip", {"model-name": "long", "epochs": "1"})
    stack.bus.run_until_idle(timeout=30)
    stack.dispatcher.start()
    stack.bus.start()
    try:
        if not trainer.started.wait(30):
            raise RuntimeError("the long slice did not start")
        result = measure_intake(Poster(stack), deliveries, tag=f"busy{mode}")
        if trainer.calls:  # the slice must have run all along
            raise RuntimeError("the slice ended before intake was measured")
    finally:
        trainer.hold.clear()
        stack.dispatcher.stop()
        stack.bus.stop()
    return result


# --- (b) slice overhead ---------------------------------------------------------------------------
@dataclass
class SliceRow:
    seq: int
    outcome: str
    http_seconds: float  # the delivery as the dispatcher saw it
    total: float  # the slice as the service measured it
    run_job: float
    overhead: float  # total - run_job
    parts: dict[str, float]
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


def _listing(store: Any, prefix: str) -> dict[str, tuple[int, int]]:
    return {info.uri[len(prefix) :]: (info.generation, info.size) for info in store.list(prefix)}


def measure_slices(
    root: Path, service_env: Mapping[str, str], *, epochs: int, log: Callable[[str], None]
) -> SliceResult:
    """One job of the real pipeline, its slices delivered by the local dispatcher."""
    from rvc_core.testing import simple_dataset_zip

    stack = new_stack(root, service_env)  # the real trainer: rvc_core.job.run_job
    dataset = simple_dataset_zip(root / "voice.zip", files=3, seconds=6.0)
    info = stack.upload(dataset, "datasets/slices.zip", {"model-name": "slices", "epochs": str(epochs)})
    del info
    stack.bus.run_until_idle(timeout=60)
    records = stack.services.records
    store = stack.services.store_for(records.state_url)
    job_ids = [p.name for p in (stack.root / "state" / "jobs").iterdir()]
    prefix = f"{records.job_prefix(job_ids[0])}/work/"
    result = SliceResult()
    before: dict[str, tuple[int, int]] = {}
    deliver = stack.dispatcher.deliver

    def measured(task: Any) -> int:
        nonlocal before
        started = time.perf_counter()
        status = deliver(task)
        http_seconds = time.perf_counter() - started
        answer = stack.work_answers[-1]
        after = _listing(store, prefix)
        changed = [name for name, entry in after.items() if before.get(name) != entry]
        before = after
        timings = dict(answer.get("timings") or {})
        total, run_job = timings.pop("total", http_seconds), timings.get("run_job", 0.0)
        row = SliceRow(
            seq=int(answer.get("seq") or 0),
            outcome=str(answer.get("outcome")),
            http_seconds=http_seconds,
            total=total,
            run_job=run_job,
            overhead=total - run_job,
            parts={k: v for k, v in timings.items() if k != "run_job"},
            files_uploaded=len(changed),
            kib_uploaded=sum(after[name][1] for name in changed) / 1024,
        )
        result.rows.append(row)
        log(f"  slice {row.seq}: {row.outcome}, {row.total:.2f} s, overhead {row.overhead:.3f} s")
        return status

    stack.dispatcher.deliver = measured
    stack.run(timeout=3600)
    return result


# --- (c) the work queue ---------------------------------------------------------------------------
@dataclass
class JobRow:
    job: int
    slices: int
    wait_s: float  # upload to the start of its first slice
    done_s: float  # upload to the end of its last slice


@dataclass
class QueueResult:
    runner: str
    jobs: int
    slots: int
    slice_seconds: float
    rows: list[JobRow]
    makespan_s: float  # first upload to the last final result
    training_s: float  # sum of S_j * T
    ideal_s: float  # training_s / slots
    makespan_ratio: float  # makespan / ideal
    slices_run: int
    dispatched: int
    dispatches_per_slice: float
    statuses: dict[str, int]
    finals: dict[str, int]


def job_lengths(jobs: int) -> list[int]:
    """Slices per job, all different within each group of five: 2, 5, 3, 1, 4, 2, ..."""
    return [(j * 3 + 1) % 5 + 1 for j in range(jobs)]


def measure_queue(root: Path, *, jobs: int, slots: int, seconds: float, runner: str) -> QueueResult:
    trainer = FixedTrainer(seconds=seconds)
    stack = new_stack(root, fake_env(max(5.0, seconds * 3)), trainer=trainer, slots=slots)
    pool = None
    if runner == "pool":
        pool = WorkerPool(stack, slots, trainer)
        use_dispatcher(stack, pool.deliver, slots)
    lengths = job_lengths(jobs)
    dataset = tiny_zip(root / "voice.zip")
    uploaded: dict[str, tuple[int, float]] = {}  # job id -> (index, upload time)
    from consumer.jobs.records import job_id_for, source_key

    t0 = time.time()
    for j, length in enumerate(lengths):
        name = f"datasets/queue-{j}.zip"
        at = time.time()
        info = stack.upload(dataset, name, {"model-name": f"queue{j}", "epochs": str(length)})
        uploaded[job_id_for(source_key("inbox", name, info.generation))] = (j, at)
    stack.run(timeout=600 + 10 * sum(lengths) * seconds)
    end = time.time()
    finals: dict[str, int] = {}
    for r in stack.finals():
        finals[r.kind] = finals.get(r.kind, 0) + 1
    rows = []
    for job_id, (j, at) in sorted(uploaded.items(), key=lambda kv: kv[1][0]):
        calls = [c for c in trainer.calls if c["job"] == job_id]
        rows.append(
            JobRow(
                job=j,
                slices=len(calls),
                wait_s=min(c["start"] for c in calls) - at if calls else float("nan"),
                done_s=max(c["end"] for c in calls) - at if calls else float("nan"),
            )
        )
    training = sum(lengths) * seconds
    statuses: dict[str, int] = {}  # /work answers by outcome ("ahead", "busy": answered 429, retried)
    for answer in stack.work_answers:
        outcome = str((answer or {}).get("outcome"))
        statuses[outcome] = statuses.get(outcome, 0) + 1
    makespan = end - t0
    return QueueResult(
        runner=runner, jobs=jobs, slots=slots, slice_seconds=seconds, rows=rows, makespan_s=makespan,
        training_s=training, ideal_s=training / slots, makespan_ratio=makespan / (training / slots),
        slices_run=len(trainer.calls), dispatched=stack.dispatcher.dispatched,
        dispatches_per_slice=stack.dispatcher.dispatched / max(1, len(trainer.calls)),
        statuses=statuses, finals=finals,
    )  # fmt: skip


# --- (d) what a switch between instances costs ----------------------------------------------------
@dataclass
class SwitchRow:
    seq: int
    instance: str
    kind: str  # first (no work dir yet), local (ran the previous slice), switched
    restore_s: float
    dataset_s: float
    sync_s: float
    overhead_s: float  # total - run_job
    total_s: float


SWITCH_PLAN = "AABBAA"


def measure_switch(root: Path, *, mib: int, seconds: float) -> tuple[list[SwitchRow], int]:
    stage_files, stage_bytes = 200, 20 * 1024
    checkpoint = max(0, mib * MiB - stage_files * stage_bytes)
    trainer = FixedTrainer(
        seconds=seconds, checkpoint_bytes=checkpoint, stage_files=stage_files, stage_file_bytes=stage_bytes
    )
    stack = new_stack(root, fake_env(max(30.0, seconds * 3)), trainer=trainer)

    def route(task: Any) -> int:
        seq = int(task.name.rsplit("-", 1)[1])
        return ord(SWITCH_PLAN[min(seq, len(SWITCH_PLAN) - 1)]) - ord("A")

    pool = WorkerPool(stack, 2, trainer, route=route)
    use_dispatcher(stack, pool.deliver, 1)
    stack.upload(
        tiny_zip(root / "voice.zip"),
        "datasets/switch.zip",
        {"model-name": "switch", "epochs": str(len(SWITCH_PLAN))},
    )
    stack.run(timeout=3600)
    rows, previous = [], None
    for d in pool.deliveries:
        answer = d["answer"]
        t = answer.get("timings") or {}
        if answer.get("outcome") not in ("advanced", "finished"):
            continue
        seq = int(answer["seq"])
        kind = "first" if previous is None else ("local" if previous == d["instance"] else "switched")
        previous = d["instance"]
        rows.append(
            SwitchRow(
                seq=seq, instance="AB"[d["instance"]], kind=kind, restore_s=t.get("restore", 0.0),
                dataset_s=t.get("dataset", 0.0), sync_s=t.get("sync", 0.0),
                overhead_s=t.get("total", 0.0) - t.get("run_job", 0.0), total_s=t.get("total", 0.0),
            )
        )  # fmt: skip
    return rows, stage_files * stage_bytes + checkpoint


# --- reporting ------------------------------------------------------------------------------------
def render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def intake_table(results: Mapping[str, IntakeResult]) -> str:
    rows = [["while", "n", "p50", "p90", "p99", "max", "mean", "outcomes"]]
    for name, r in results.items():
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r.outcomes.items()))
        rows.append(
            [
                name,
                str(r.deliveries),
                *(f"{v:.1f}" for v in (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms)),
                outcomes,
            ]
        )
    return render(rows)


def slice_table(result: SliceResult) -> str:
    from consumer.work.slices import SLICE_PARTS

    seen = {p for r in result.rows for p in r.parts}
    parts = [p for p in SLICE_PARTS if p in seen]
    rows = [
        ["seq", "outcome", "total", "run_job", "overhead", "%480s", *parts, "other", "edge", "files", "KiB"]
    ]
    for r in result.rows:
        other = r.overhead - sum(r.parts.values())
        rows.append(
            [
                str(r.seq), r.outcome, f"{r.total:.3f}", f"{r.run_job:.3f}", f"{r.overhead:.3f}",
                f"{r.overhead_share_of_production_slice:.3f}",
                *(f"{r.parts[p]:.3f}" if p in r.parts else "-" for p in parts),
                f"{other:.3f}", f"{r.http_seconds - r.total:.3f}", str(r.files_uploaded),
                f"{r.kib_uploaded:.0f}",
            ]
        )  # fmt: skip
    return render(rows)


def slice_summary(result: SliceResult) -> dict[str, float]:
    """The mean and worst overhead of the steady slices, in seconds and % of 480 s."""
    steady = result.steady() or result.rows
    overheads = [r.overhead for r in steady]
    return {
        "steady_slices": len(steady),
        "mean_overhead_s": statistics.fmean(overheads),
        "max_overhead_s": max(overheads),
        "mean_overhead_pct_of_480s": 100 * statistics.fmean(overheads) / PRODUCTION_SLICE_SECONDS,
        "max_overhead_pct_of_480s": 100 * max(overheads) / PRODUCTION_SLICE_SECONDS,
    }


def queue_tables(results: list[QueueResult]) -> str:
    out = []
    summary = [["runner", "jobs", "K", "T s", "slices", "sum S*T", "sum/K", "makespan", "ratio",
                "dispatched", "disp/slice", "/work outcomes", "finals"]]  # fmt: skip
    for q in results:
        summary.append(
            [
                q.runner, str(q.jobs), str(q.slots), f"{q.slice_seconds:g}", str(q.slices_run),
                f"{q.training_s:.1f}", f"{q.ideal_s:.1f}", f"{q.makespan_s:.2f}", f"{q.makespan_ratio:.3f}",
                str(q.dispatched), f"{q.dispatches_per_slice:.3f}",
                " ".join(f"{k}x{v}" for k, v in sorted(q.statuses.items())),
                " ".join(f"{k}x{v}" for k, v in sorted(q.finals.items())),
            ]
        )  # fmt: skip
    out.append(render(summary))
    for q in results:
        rows = [["job", "slices", "wait s", "done s"]]
        rows += [[str(r.job), str(r.slices), f"{r.wait_s:.2f}", f"{r.done_s:.2f}"] for r in q.rows]
        waits = [r.wait_s for r in q.rows]
        out.append(
            f"\n{q.runner} K={q.slots}: wait from upload to first slice start, p50 "
            f"{statistics.median(waits):.2f} s, max {max(waits):.2f} s\n{render(rows)}"
        )
    return "\n".join(out)


def switch_table(rows: list[SwitchRow]) -> str:
    table = [["seq", "instance", "kind", "restore", "dataset", "sync", "overhead", "total"]]
    for r in rows:
        table.append(
            [
                str(r.seq),
                r.instance,
                r.kind,
                *(f"{v:.3f}" for v in (r.restore_s, r.dataset_s, r.sync_s, r.overhead_s, r.total_s)),
            ]
        )
    return render(table)


def switch_summary(rows: list[SwitchRow]) -> dict[str, float]:
    out = {}
    for kind in ("local", "switched"):
        picked = [r for r in rows if r.kind == kind]
        if picked:
            out[f"{kind}_restore_s_p50"] = statistics.median(r.restore_s for r in picked)
            out[f"{kind}_overhead_s_p50"] = statistics.median(r.overhead_s for r in picked)
    return out


PARTS = ("intake", "slices", "queue", "switch")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--deliveries", type=int, default=200, help="timed /events deliveries per measurement")
    p.add_argument("--slice-seconds", type=float, default=5.0, help="(b) SLICE_SECONDS of the service")
    p.add_argument("--epochs", type=int, default=30, help="(b) epochs of the job")
    p.add_argument("--jobs", type=int, default=6, help="(c) jobs uploaded at once")
    p.add_argument("--slots", type=int, nargs="+", default=[1, 3], help="(c) worker slots K, each measured")
    p.add_argument("--slice-time", type=float, default=1.0, help="(c) seconds of every fake slice")
    p.add_argument("--runner", choices=("pool", "shared", "both"), default="pool", help="(c) see above")
    p.add_argument("--switch-mib", type=int, default=450, help="(d) work-dir size, MiB")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if unknown := set(parts) - set(PARTS):
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")

    import logging

    logging.getLogger("consumer").setLevel(logging.ERROR)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rvc-bench-consumer-") as tmp:
        root = Path(tmp)
        if "intake" in parts:
            intake: dict[str, IntakeResult] = {}
            log("intake: idle")
            intake["idle"] = measure_intake_idle(root / "intake-idle", args.deliveries)
            for mode in ("sleep", "spin"):
                log(f"intake: while a slice runs ({mode})")
                intake[f"busy-{mode}"] = measure_intake_busy(root / f"intake-{mode}", args.deliveries, mode)
            print("intake latency: POST /events of a wrapped finalize push, ms (goal: p50 < 50)")
            print(intake_table(intake))
            out["intake"] = {k: asdict(v) for k, v in intake.items()}
        if "slices" in parts:
            log("slices of one job (real pipeline, tiny preset, CPU)")
            env = {"SLICE_SECONDS": str(args.slice_seconds), "DISPATCH_DEADLINE_SECONDS": "60",
                   "PROGRESS_EVERY_EPOCHS": "1"}  # fmt: skip
            sliced = measure_slices(root / "slices", env, epochs=args.epochs, log=log)
            s = slice_summary(sliced)
            print(
                "\nslice overhead: seconds outside run_job per /work slice "
                f"(SLICE_SECONDS={args.slice_seconds:g}, tiny preset, CPU; "
                f"%480s = overhead as a share of a 480 s slice; goal < 5)\n{slice_table(sliced)}"
            )
            print(
                f"steady slices {s['steady_slices']:.0f}, overhead mean {s['mean_overhead_s']:.3f} s "
                f"({s['mean_overhead_pct_of_480s']:.3f} % of 480 s), max {s['max_overhead_s']:.3f} s "
                f"({s['max_overhead_pct_of_480s']:.3f} %)"
            )
            out["slices"] = [asdict(r) for r in sliced.rows]
            out["slice_summary"] = s
        if "queue" in parts:
            queued = []
            runners = ("pool", "shared") if args.runner == "both" else (args.runner,)
            for runner in runners:
                for k in args.slots:
                    log(f"queue: {args.jobs} jobs on {k} slots, runner {runner}")
                    queued.append(
                        measure_queue(root / f"queue-{runner}-{k}", jobs=args.jobs, slots=k,
                                      seconds=args.slice_time, runner=runner)
                    )  # fmt: skip
            print(
                f"\nwork queue: {args.jobs} jobs uploaded at once, "
                f"slices of {args.slice_time:g} s (fake trainer), "
                f"lengths {job_lengths(args.jobs)} slices; ratio = makespan / (sum S*T / K) (goal ~1); "
                "disp/slice = deliveries / slices run (goal <= 1.05)"
            )
            print(queue_tables(queued))
            out["queue"] = [asdict(q) for q in queued]
        if "switch" in parts:
            log(f"switch: work dir of {args.switch_mib} MiB over two instances, {SWITCH_PLAN}")
            rows, size = measure_switch(root / "switch", mib=args.switch_mib, seconds=0.2)
            s = switch_summary(rows)
            print(
                f"\nswitch between instances: work dir {size / MiB:.0f} MiB (synthetic: 200 x 20 KiB stage "
                f"outputs + G.pth/D.pth rewritten each slice), local file store, seconds"
            )
            print(switch_table(rows))
            print(", ".join(f"{k} {v:.3f}" for k, v in s.items()))
            out["switch"] = {"rows": [asdict(r) for r in rows], "work_dir_bytes": size, **s}
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
