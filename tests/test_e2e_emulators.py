"""Issue 4's behaviours 1–8, end to end on the official Pub/Sub emulator and fake-gcs-server.

The service runs as on Cloud Run (`python -m consumer serve`: gunicorn, one worker) with the real
rvc_core pipeline (tiny preset, random-initialised networks, CPU). fake-gcs-server publishes real
OBJECT_FINALIZE notifications for every bucket to the emulator; a push subscription carries them to
`/events`; work tasks wait in the folder-backed task queue, whose dispatcher (in this process, as
the dev stack runs it) delivers them to `/work` over HTTP; results are pulled. Tests about topology
run both: role `all` in one process, and `api` + `worker` as separate processes. Uploads use the real
`gcloud storage cp` where a user would. Every server and process is stopped at teardown.

The serving-edge tests at the end (configuration errors, JSON logs) need no emulator.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import pytest

from consumer.adapters.messaging.admin import (
    SubscriptionSpec,
    ensure_subscription,
    ensure_topic,
    pull,
    subscriber_admin,
)
from consumer.adapters.tasks.local import LocalDispatcher, LocalTaskQueue, http_deliverer
from consumer.jobs.results import ReceivedResult, read_result
from consumer.local.devstack import create_buckets
from consumer.local.processes import ManagedProcess, free_port, spawn, wait_until_ready
from rvc_core.testing import simple_dataset_zip
from tests.emulators import (
    NOTIFICATION_TOPIC,
    FakeGcs,
    HttpFaultProxy,
    PubSubEmulator,
    TcpFaultProxy,
    unique_name,
)

REPO = Path(__file__).resolve().parents[1]
FINAL_KINDS = ("succeeded", "failed", "cancelled")


# --- the service as a process --------------------------------------------------------------------
@dataclass
class Service:
    name: str
    env: dict[str, str]
    log_path: Path
    role: str = "all"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Service:
        env = {**os.environ, **self.env, "HOST": "127.0.0.1", "PORT": str(self.port), "PYTHONPATH": str(REPO)}
        self.process = spawn(
            self.name, [sys.executable, "-m", "consumer", "serve", "--threads", "4", "--role", self.role],
            env=env, log_path=self.log_path, cwd=REPO,
        )  # fmt: skip
        wait_until_ready(f"{self.url}/healthz", self.process, timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL, as when an instance vanishes: no handler runs, nothing is flushed or released."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.popen.pid, signal.SIGKILL)
        self.process.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=15.0)

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # The emulator's push client drops idle keep-alive connections; that is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RoundRobin:
    """A tiny load balancer: each request goes to the next upstream, as Cloud Run spreads requests
    over instances."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self._next = 0
        self._lock = threading.Lock()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with balancer._lock:
                    upstream = balancer.upstreams[balancer._next % len(balancer.upstreams)]
                    balancer._next += 1
                host, port = upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host.removeprefix("http://"), int(port), timeout=900)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                    }
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    status, data = response.status, response.read()
                except OSError:
                    status, data = 502, b"upstream unreachable"
                finally:
                    conn.close()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="round-robin", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- one test's world on the emulators -------------------------------------------------------------
@dataclass
class World:
    emulator: PubSubEmulator
    gcs: FakeGcs
    tmp: Path
    gcloud_env: dict[str, str]
    inbox: str = field(default_factory=lambda: unique_name("inbox"))
    state: str = field(default_factory=lambda: unique_name("state"))
    models: str = field(default_factory=lambda: unique_name("models"))
    results_topic: str = field(default_factory=lambda: unique_name("results"))
    services: list[Service] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    results: list[ReceivedResult] = field(default_factory=list)
    apis: list[Service] = field(default_factory=list)  # split topology: the api process
    balancer: RoundRobin | None = None
    dispatcher: LocalDispatcher | None = None
    _client: Any = None

    @property
    def tasks_dir(self) -> Path:
        return self.tmp / "tasks"

    # setup ------------------------------------------------------------------------------------------
    def start(
        self,
        *,
        instances: int = 1,
        split: bool = False,
        dispatch_deadline: int = 120,
        storage_url: str | None = None,
        pubsub_host: str | None = None,
        **env: str,
    ) -> World:
        """`instances` processes of role `all`, or with `split` as many of role `worker` plus one of
        role `api`; a dispatcher delivering the queue's tasks to them, `instances` at once."""
        create_buckets(self.gcs.url, self.emulator.project, [self.inbox, self.state, self.models])
        ensure_topic(self.emulator.project, self.results_topic, emulator_host=self.emulator.host)
        service_env = {
            "GOOGLE_CLOUD_PROJECT": self.emulator.project,
            "PUBSUB_EMULATOR_HOST": pubsub_host or self.emulator.host,
            "STORAGE_EMULATOR_HOST": storage_url or self.gcs.url,
            "STATE_BUCKET": f"gs://{self.state}", "MODELS_BUCKET": f"gs://{self.models}",
            "RESULTS_TOPIC": self.results_topic, "TASK_QUEUE": f"file://{self.tasks_dir}",
            "WORKER_SLOTS": str(instances), "DISPATCH_DEADLINE_SECONDS": str(dispatch_deadline),
            "TRAIN_PRESET": "tiny", "RVC_ASSETS": "none", "RVC_PRETRAINED": "none", "DEVICE": "cpu",
            "SLICE_SECONDS": "60", "LEASE_SECONDS": "6", "PROGRESS_EVERY_EPOCHS": "1",
            **env,
        }  # fmt: skip
        role = "worker" if split else "all"
        for i in range(instances):
            service_env_i = {**service_env, "WORK_ROOT": str(self.tmp / f"scratch-{i}")}
            self.services.append(
                Service(f"{role}-{i}", service_env_i, self.tmp / f"{role}-{i}.log", role=role).start()
            )
        if split:
            api_env = {**service_env, "WORK_ROOT": str(self.tmp / "scratch-api")}
            self.apis.append(Service("api", api_env, self.tmp / "api.log", role="api").start())
        if instances > 1:
            self.balancer = RoundRobin([s.url for s in self.services])
        workers = self.balancer.url if self.balancer else self.services[0].url
        self._subscribe(self.apis[0].url if split else workers)
        self.dispatcher = LocalDispatcher(
            LocalTaskQueue(self.tasks_dir),
            http_deliverer(f"{workers}/work", timeout=dispatch_deadline),
            max_concurrent=instances,
            min_backoff=0.1,
            max_backoff=1.0,
        ).start()
        return self

    def _subscribe(self, endpoint: str) -> None:
        # No retry policy: the emulator (0.8.20) stops redelivering when several messages of one
        # subscription are in retry-policy backoff at once; without one it redelivers about every second.
        specs = [
            SubscriptionSpec(unique_name("results-pull"), self.results_topic, ack_deadline_seconds=60),
            SubscriptionSpec(
                unique_name("intake-push"), NOTIFICATION_TOPIC, push_endpoint=f"{endpoint}/events",
                ack_deadline_seconds=10,
            ),
        ]  # fmt: skip
        for spec in specs:
            self.subscriptions.append(
                ensure_subscription(self.emulator.project, spec, emulator_host=self.emulator.host)
            )

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop(wait=False)  # a delivery in flight ends when its service stops
        for service in [*self.services, *self.apis]:
            service.stop()
        if self.balancer:
            self.balancer.close()
        client = subscriber_admin(self.emulator.host)
        try:
            for path in self.subscriptions:
                with contextlib.suppress(Exception):
                    client.delete_subscription(subscription=path, timeout=5)
        finally:
            client.transport.close()

    # acting as a user ---------------------------------------------------------------------------------
    @property
    def storage(self) -> Any:
        if self._client is None:
            from consumer.adapters.storage.gcs import default_client

            self._client = default_client(self.gcs.url, project=self.emulator.project)
        return self._client

    def gcloud_cp(self, path: Path, name: str, metadata: dict[str, str]) -> None:
        """The real `gcloud storage cp --custom-metadata=…`, as a user uploads a dataset."""
        command = ["gcloud", "storage", "cp", str(path), f"gs://{self.inbox}/{name}"]
        if metadata:
            command.append("--custom-metadata=" + ",".join(f"{k}={v}" for k, v in metadata.items()))
        subprocess.run(command, env=self.gcloud_env, check=True, capture_output=True, timeout=120)

    def upload(self, path: Path, name: str, metadata: dict[str, str]) -> int:
        """The same upload through the client library (faster than gcloud); returns the generation."""
        blob = self.storage.bucket(self.inbox).blob(name)
        blob.metadata = metadata
        blob.upload_from_filename(str(path), content_type="application/zip", timeout=30)
        return int(blob.generation)

    def collect(self, done: Callable[[list[ReceivedResult]], bool], timeout: float) -> list[ReceivedResult]:
        """Pulls results until `done(results so far)`; at the timeout, fails showing the service logs."""
        deadline = time.monotonic() + timeout
        results_sub = self.subscriptions[0]
        while True:
            for message in pull(
                self.emulator.project, results_sub, timeout=2.0, emulator_host=self.emulator.host
            ):
                self.results.append(read_result(message.data, message.attributes))
            if done(self.results):
                return self.results
            if time.monotonic() > deadline:
                kinds = [(r.kind, r.data.get("job_id")) for r in self.results]
                self.fail_with_logs(f"results so far {kinds}")
            time.sleep(0.5)

    def fail_with_logs(self, message: str) -> NoReturn:
        tails = "\n".join(
            f"--- {s.name}\n{s.log_path.read_text()[-3000:]}" for s in [*self.services, *self.apis]
        )
        pytest.fail(f"{message}; service logs:\n{tails}")

    def finals(self, job_id: str | None = None) -> list[ReceivedResult]:
        return [r for r in self.results if r.kind in FINAL_KINDS and job_id in (None, r.data["job_id"])]

    def record(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.storage.bucket(self.state).blob(f"jobs/{job_id}/job.json").download_as_bytes())

    def object_names(self, bucket: str) -> list[str]:
        return sorted(b.name for b in self.storage.list_blobs(bucket))


@pytest.fixture
def world(
    pubsub_emulator: PubSubEmulator, fake_gcs: FakeGcs, gcloud_cli_env: dict[str, str], tmp_path: Path
) -> Iterator[World]:
    w = World(emulator=pubsub_emulator, gcs=fake_gcs, tmp=tmp_path, gcloud_env=gcloud_cli_env)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def voice_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 18 s of synthetic voice: enough for rvc_core to accept and train the tiny preset."""
    return simple_dataset_zip(tmp_path_factory.mktemp("voice") / "voice.zip", files=3, seconds=6.0)


def finals_for(count: int) -> Callable[[list[ReceivedResult]], bool]:
    return lambda results: len({r.data["job_id"] for r in results if r.kind in FINAL_KINDS}) >= count


def slice_log(world: World, job_id: str) -> list[dict[str, Any]]:
    return world.record(job_id)["history"]


def assert_no_overlap(intervals: list[tuple[float, float]]) -> None:
    ordered = sorted(intervals)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end, f"slices overlap: {ordered}"


# --- behaviours ------------------------------------------------------------------------------------
TOPOLOGIES = pytest.mark.parametrize("split", [False, True], ids=["all", "api+worker"])


@pytest.mark.emulator
@TOPOLOGIES
def test_1_upload_with_metadata_ends_in_one_succeeded_with_a_loadable_model(
    world: World, voice_zip: Path, split: bool
) -> None:
    world.start(split=split)
    world.gcloud_cp(voice_zip, "datasets/alice.zip", {"model-name": "alice", "epochs": "2"})
    generation = int(world.storage.bucket(world.inbox).get_blob("datasets/alice.zip").generation)
    world.collect(finals_for(1), timeout=300)
    time.sleep(2)  # a duplicate final result would arrive now
    world.collect(lambda _: True, timeout=5)
    finals = world.finals()
    assert [f.kind for f in finals] == ["succeeded"]
    data = finals[0].data
    assert (data["model_name"], data["spec"]["epochs"], data["source"]["generation"]) == (
        "alice",
        2,
        generation,
    )
    pth_uri = data["artifacts"]["pth"]
    bucket, _, name = pth_uri.removeprefix("gs://").partition("/")
    local = world.tmp / "alice.pth"
    world.storage.bucket(bucket).blob(name).download_to_filename(str(local))
    import torch

    model = torch.load(local, weights_only=True, map_location="cpu")
    assert model["version"] == "v2" and "emb_g.weight" in model["weight"]
    for uri in data["artifacts"].values():
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        assert world.storage.bucket(bucket).get_blob(name) is not None, uri


@pytest.mark.emulator
def test_2_many_short_slices_complete_without_overlap(world: World, voice_zip: Path) -> None:
    world.start(dispatch_deadline=15, SLICE_SECONDS="3")
    generation = world.upload(voice_zip, "datasets/bob.zip", {"model-name": "bob", "epochs": "6"})
    world.collect(finals_for(1), timeout=600)
    finals = world.finals()
    assert [f.kind for f in finals] == ["succeeded"] and finals[0].data["source"]["generation"] == generation
    history = slice_log(world, finals[0].data["job_id"])
    assert len(history) >= 3
    assert_no_overlap([(h["started_at"], h["ended_at"]) for h in history])


@pytest.mark.emulator
@pytest.mark.slow
@TOPOLOGIES
def test_3_sigkill_mid_slice_then_restart_resumes_from_the_checkpoint(
    world: World, voice_zip: Path, split: bool
) -> None:
    world.start(split=split, SLICE_SECONDS="4")
    # 40 tiny-preset epochs take ~13 s on a 2-core CPU: training spans several 4 s slices, so the
    # kill lands in a slice that trains from a checkpoint (8 epochs once fitted in one slice).
    world.upload(voice_zip, "datasets/carol.zip", {"model-name": "carol", "epochs": "40"})
    accepted = world.collect(lambda rs: any(r.kind == "accepted" for r in rs), timeout=60)
    job_id = next(r.data["job_id"] for r in accepted if r.kind == "accepted")
    deadline = time.monotonic() + 300
    while not (slice_log(world, job_id) and slice_log(world, job_id)[-1]["epoch_to"] > 0):
        if time.monotonic() > deadline:
            world.fail_with_logs(f"no checkpointed epoch in time; record: {world.record(job_id)}")
        time.sleep(0.5)
    service = world.services[0]  # role all, or the worker
    deadline = time.monotonic() + 120
    while (lease := (record := world.record(job_id))["lease"]) is None:  # the next slice starts: kill it
        if record["status"] in FINAL_KINDS or time.monotonic() > deadline:
            world.fail_with_logs(f"no second slice to kill; record: {record}")
        time.sleep(0.1)
    owners_before = {h["owner"] for h in slice_log(world, job_id)} | {lease["owner"]}
    service.kill()
    service.start()
    world.collect(finals_for(1), timeout=600)
    assert [f.kind for f in world.finals()] == ["succeeded"]
    after_restart = [h for h in slice_log(world, job_id) if h["owner"] not in owners_before]
    assert after_restart and after_restart[0]["epoch_from"] > 0
    assert world.record(job_id)["metrics"]["epochs"] == 40


@pytest.mark.emulator
def test_4_repeated_notification_and_reupload_make_one_job_per_generation(
    world: World, voice_zip: Path
) -> None:
    world.start(SLICE_SECONDS="5")
    first = world.upload(voice_zip, "datasets/dave.zip", {"model-name": "dave", "epochs": "60"})
    republish_notification(world, "datasets/dave.zip", first, times=4)
    world.collect(lambda rs: any(r.kind == "progress" for r in rs), timeout=120)
    second = world.upload(voice_zip, "datasets/dave.zip", {"model-name": "dave", "epochs": "1"})
    world.collect(finals_for(2), timeout=600)
    time.sleep(3)
    world.collect(lambda _: True, timeout=5)
    by_generation = {r.data["source"]["generation"]: r for r in world.finals()}
    assert len(world.finals()) == 2 and set(by_generation) == {first, second}
    assert by_generation[first].data["error"]["code"] == "superseded"
    assert by_generation[second].kind == "succeeded"
    assert len([r for r in world.results if r.kind == "accepted"]) == 2


def republish_notification(world: World, name: str, generation: int, *, times: int) -> None:
    """The same OBJECT_FINALIZE again, as Cloud Storage may publish a change more than once."""
    from consumer.adapters.messaging.pubsub import PubSubPublisher

    blob = world.storage.bucket(world.inbox).get_blob(name)
    resource = {
        "kind": "storage#object", "bucket": world.inbox, "name": name, "generation": str(generation),
        "size": str(blob.size), "contentType": blob.content_type, "metadata": blob.metadata or {},
    }  # fmt: skip
    attributes = {
        "bucketId": world.inbox, "objectId": name, "objectGeneration": str(generation),
        "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1",
    }  # fmt: skip
    publisher = PubSubPublisher(world.emulator.project, client_factory=_emulator_publisher(world))
    for _ in range(times):
        publisher.publish(NOTIFICATION_TOPIC, json.dumps(resource).encode(), attributes)


def _emulator_publisher(world: World) -> Callable[[], Any]:
    from consumer.adapters.messaging.pubsub import default_client

    return lambda: default_client(world.emulator.host)


@pytest.mark.emulator
def test_5_bad_input_fails_once_with_the_right_code_and_writes_no_model(world: World, tmp_path: Path) -> None:
    world.start()
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"this is a text file, not an archive" * 20)
    corrupt = tmp_path / "corrupt.zip"
    simple_dataset_zip(tmp_path / "whole.zip", files=1, seconds=2.0)
    corrupt.write_bytes((tmp_path / "whole.zip").read_bytes()[:-300])
    no_audio = tmp_path / "no_audio.zip"
    with zipfile.ZipFile(no_audio, "w") as zf:
        zf.writestr("readme.txt", "no voice here")
    cases = {
        "datasets/not.zip": (not_zip, {}, "not_a_zip"),
        "datasets/corrupt.zip": (corrupt, {}, "zip_corrupt"),
        "datasets/no_audio.zip": (no_audio, {}, "no_audio"),
        "datasets/bad_metadata.zip": (not_zip, {"epochs": "0"}, "invalid_metadata"),
    }
    for name, (path, metadata, _) in cases.items():
        world.upload(path, name, metadata)
    world.collect(finals_for(len(cases)), timeout=300)
    time.sleep(5)  # long enough for a redelivery (about every second after a failure) to show up
    world.collect(lambda _: True, timeout=5)
    codes = {r.data["source"]["name"]: r.data["error"]["code"] for r in world.finals()}
    assert codes == {name: code for name, (_, _, code) in cases.items()}
    assert len(world.finals()) == len(cases)
    assert world.object_names(world.models) == []
    intake_lines = [
        e for s in world.services for e in s.log_entries() if e.get("message") == "intake accepted"
    ]
    assert len(intake_lines) == len(cases)
    assert not [e for s in world.services for e in s.log_entries() if e.get("message") == "intake duplicate"]


@pytest.mark.emulator
@pytest.mark.slow
def test_6_transient_faults_are_retried_and_a_persistent_one_fails_retryable(
    world: World, voice_zip: Path, gcs_fault_proxy: HttpFaultProxy, pubsub_fault_proxy: TcpFaultProxy
) -> None:
    world.start(
        storage_url=gcs_fault_proxy.url,
        pubsub_host=pubsub_fault_proxy.host,
        MAX_CONSECUTIVE_FAILURES="2",
        SLICE_SECONDS="5",
    )
    gcs_fault_proxy.fail_next(3, path_contains=f"/b/{world.state}/")
    world.upload(voice_zip, "datasets/erin.zip", {"model-name": "erin", "epochs": "2"})
    pubsub_fault_proxy.cut_for(3.0)  # intake's first publish (`accepted`) meets a dead line
    world.collect(finals_for(1), timeout=300)
    assert [f.kind for f in world.finals()] == ["succeeded"]
    assert gcs_fault_proxy.injected() == 3
    assert pubsub_fault_proxy.refused > 0

    gcs_fault_proxy.fail_next(10_000, path_contains=f"/b/{world.inbox}/")  # the dataset cannot be read
    world.upload(voice_zip, "datasets/frank.zip", {"model-name": "frank", "epochs": "2"})
    world.collect(finals_for(2), timeout=300)
    gcs_fault_proxy.heal()
    failed = [f for f in world.finals() if f.data["model_name"] == "frank"]
    assert len(failed) == 1 and failed[0].kind == "failed"
    assert failed[0].data["error"]["retryable"] is True


@pytest.mark.emulator
@pytest.mark.slow
def test_7_ten_uploads_two_processes_ten_final_events(world: World, tmp_path: Path) -> None:
    world.start(instances=2, SLICE_SECONDS="5")
    small = simple_dataset_zip(tmp_path / "small.zip", files=2, seconds=6.0)
    for i in range(10):
        world.upload(small, f"datasets/voice{i}.zip", {"epochs": "1"})
    world.collect(finals_for(10), timeout=900)
    time.sleep(3)
    world.collect(lambda _: True, timeout=5)
    finals = world.finals()
    assert len(finals) == 10 and len({f.data["job_id"] for f in finals}) == 10
    assert {f.data["model_name"] for f in finals} == {f"voice{i}" for i in range(10)}
    per_owner: dict[str, list[tuple[float, float]]] = {}
    for job_id in {f.data["job_id"] for f in finals}:
        for h in slice_log(world, job_id):
            per_owner.setdefault(h["owner"], []).append((h["started_at"], h["ended_at"]))
    assert len(per_owner) == 2, "both processes should have run slices"
    for intervals in per_owner.values():
        assert_no_overlap(intervals)


@pytest.mark.emulator
def test_8_nothing_the_service_writes_triggers_intake(world: World, voice_zip: Path) -> None:
    world.start()
    world.upload(voice_zip, "datasets/gina.zip", {"model-name": "gina", "epochs": "1"})
    world.collect(finals_for(1), timeout=300)
    time.sleep(3)  # notifications of the last writes to the models and state buckets
    world.collect(lambda _: True, timeout=5)
    assert world.object_names(world.models), "the job wrote no model"
    jobs = {n.split("/")[1] for n in world.object_names(world.state) if n.startswith("jobs/")}
    assert len(jobs) == 1
    assert len([r for r in world.results if r.kind == "accepted"]) == 1
    ignored = [e for e in world.services[0].log_entries() if "own buckets" in e.get("message", "")]
    assert ignored, "the service saw no notification of its own writes (is fake-gcs-server notifying?)"


@pytest.mark.emulator
@pytest.mark.slow
def test_sigterm_mid_slice_persists_and_hands_the_job_on(world: World, voice_zip: Path) -> None:
    world.start(dispatch_deadline=600, SLICE_SECONDS="120")  # a slice far longer than the test waits
    world.upload(voice_zip, "datasets/hana.zip", {"model-name": "hana", "epochs": "200"})
    progress = world.collect(
        lambda rs: any(r.kind == "progress" and (r.data["progress"].get("epoch") or 0) >= 1 for r in rs),
        timeout=300,
    )
    job_id = progress[0].data["job_id"]
    service = world.services[0]
    assert service.process is not None
    stopping = time.monotonic()
    os.kill(service.process.popen.pid, signal.SIGTERM)  # gunicorn's master, as Cloud Run does
    service.process.popen.wait(timeout=15)
    assert time.monotonic() - stopping < 10  # within Cloud Run's grace period
    record = world.record(job_id)
    assert record["seq"] == 1 and record["lease"] is None and record["history"][-1]["outcome"] == "advanced"
    assert record["progress"]["epoch"] >= 1


# --- the serving edge (no emulator) ------------------------------------------------------------------
def test_invalid_configuration_fails_at_start_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STATE_BUCKET": "gs://state", "SLICE_SECONDS": "soon"}
    env.pop("MODELS_BUCKET", None)
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid_config:")
    assert "MODELS_BUCKET" in lines[0] and "SLICE_SECONDS" in lines[0]


def test_logs_are_json_with_severity_and_the_request_trace(tmp_path: Path) -> None:
    env = {
        "STATE_BUCKET": f"file://{tmp_path / 'state'}", "MODELS_BUCKET": f"file://{tmp_path / 'models'}",
        "MESSAGING": "local", "GOOGLE_CLOUD_PROJECT": "my-proj", "WORK_ROOT": str(tmp_path / "scratch"),
    }  # fmt: skip
    service = Service("edge", env, tmp_path / "service.log").start(timeout=60)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        conn.request(
            "POST", "/events", body=b"{oops", headers={"X-Cloud-Trace-Context": "0af7651916cd43dd/1;o=1"}
        )
        assert conn.getresponse().status == 200
        time.sleep(0.5)
    finally:
        service.stop()
    entries = service.log_entries()
    ignored = [e for e in entries if e.get("message", "").startswith("delivery ignored")]
    assert ignored and ignored[0]["severity"] == "WARNING"
    assert ignored[0]["logging.googleapis.com/trace"] == "projects/my-proj/traces/0af7651916cd43dd"


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def is_dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_worker_of_a_killed_service_does_not_live_on(tmp_path: Path) -> None:
    env = {
        "STATE_BUCKET": f"file://{tmp_path / 'state'}", "MODELS_BUCKET": f"file://{tmp_path / 'models'}",
        "MESSAGING": "local", "WORK_ROOT": str(tmp_path / "scratch"),
    }  # fmt: skip
    service = Service("orphan", env, tmp_path / "service.log").start(timeout=60)
    assert service.process is not None
    master = service.process.popen.pid
    [worker] = children_of(master)
    os.kill(worker, signal.SIGSTOP)  # as busy as a worker deep in a slice: it cannot notice anything
    try:
        os.kill(master, signal.SIGKILL)
        service.process.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not is_dead(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert is_dead(worker)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
