"""`python -m consumer dev`: the local stack, driven the way a user drives it, with the real gcloud CLI,
in both topologies (one process of role `all`; `--split`: `api` and `worker` processes); its work
queue's dispatcher; and the emulator processes, which must never outlive whatever started them."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

from consumer.local.devstack import DevStack, DevStackConfig, parse_env_text
from rvc_core.testing import simple_dataset_zip

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.emulator


@dataclass
class RunningDevStack:
    process: subprocess.Popen[bytes]
    env_file: Path
    env: dict[str, str]  # the variables its env file exports
    stderr: Path

    def gcloud(self, *args: str, config_dir: Path) -> str:
        env = {
            **os.environ,
            **self.env,
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        }
        done = subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def interrupt(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)


def read_env_file(path: Path) -> dict[str, str]:
    return parse_env_text(path.read_text())


def start_dev_stack(tmp_path: Path, *args: str) -> RunningDevStack:
    env_file = tmp_path / "dev.env"
    stderr = tmp_path / "dev.stderr"
    with open(tmp_path / "dev.stdout", "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "dev", "--env-file", str(env_file), *args],
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # its logs and scratch stay in the test's folder
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 150
    while not env_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the dev stack did not start:\n{stderr.read_text()[-3000:]}")
        time.sleep(0.2)
    return RunningDevStack(process, env_file, read_env_file(env_file), stderr)


@pytest.fixture(scope="module", params=["all", "split"])
def dev_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningDevStack]:
    args = ["--split"] if request.param == "split" else []
    stack = start_dev_stack(tmp_path_factory.mktemp(f"devstack-{request.param}"), *args)
    try:
        yield stack
    finally:
        if stack.process.poll() is None:
            try:
                stack.interrupt()
            except subprocess.TimeoutExpired:
                os.killpg(stack.process.pid, signal.SIGKILL)
                stack.process.wait()


def port_is_open(url_or_host: str) -> bool:
    parts = urlsplit(url_or_host if "//" in url_or_host else f"//{url_or_host}")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname or "", parts.port or 0)) == 0


def pull_until(
    stack: RunningDevStack, config_dir: Path, wanted: str, timeout: float = 40.0, *, model_name: str = ""
) -> list[dict]:
    """Pulls the results subscription with gcloud until an event of type `…wanted` (of `model_name`,
    if given) arrives."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = stack.gcloud(
            "pubsub", "subscriptions", "pull", stack.env["RESULTS_SUBSCRIPTION"],
            "--auto-ack", "--limit=20", "--format=json", config_dir=config_dir,
        )  # fmt: skip
        seen += [entry["message"] for entry in json.loads(out or "[]")]
        if any(_is_event(m["attributes"], wanted, model_name) for m in seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"no {wanted} event within {timeout} s; got {[m['attributes'] for m in seen]}")


def _is_event(attributes: dict[str, str], wanted: str, model_name: str) -> bool:
    of_model = not model_name or attributes.get("model_name") == model_name
    return attributes.get("ce-type", "").endswith(wanted) and of_model


def test_env_file_names_everything_a_user_needs_on_loopback(dev_stack: RunningDevStack) -> None:
    env = dev_stack.env
    required = {
        "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB", "CLOUDSDK_AUTH_DISABLE_CREDENTIALS",
        "CLOUDSDK_CORE_PROJECT", "INBOX_URL", "RESULTS_SUBSCRIPTION", "SERVICE_URL", "MODELS_URL",
        "TASK_QUEUE", "WORKER_URL", "WORK_URL",
    }  # fmt: skip
    assert required <= env.keys()
    assert "WORK_TOPIC" not in env  # work waits in the task queue, not on Pub/Sub
    assert env["CLOUDSDK_AUTH_DISABLE_CREDENTIALS"] == "true"
    assert env["INBOX_URL"] == "gs://inbox/datasets/"
    assert (
        env["TASK_QUEUE"].startswith("file:///") and Path(env["TASK_QUEUE"].removeprefix("file://")).is_dir()
    )
    for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "SERVICE_URL", "WORKER_URL"):
        assert "127.0.0.1:" in env[key] and port_is_open(env[key])
    for key in ("SERVICE_URL", "WORKER_URL"):
        with urlopen(f"{env[key]}/healthz", timeout=5) as response:
            assert response.status == 200
    assert env["WORK_URL"] == f"{env['WORKER_URL']}/work"
    split = env["DEVSTACK_TOPOLOGY"] == "split"
    assert (env["SERVICE_URL"] != env["WORKER_URL"]) is split
    # role api has no /work and role worker no /events: each process serves its own endpoints
    assert post(env["SERVICE_URL"], "/work", b"{}") == (404 if split else 200)
    assert post(env["WORKER_URL"], "/events", b"{}") == (404 if split else 200)


def test_env_file_can_be_sourced_by_a_shell(dev_stack: RunningDevStack) -> None:
    names = sorted(dev_stack.env)
    script = (
        f'set -eu; . "$1"; for n in {" ".join(names)}; do printf "%s=%s\\0" "$n" "$(printenv "$n")"; done'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(dev_stack.env_file)], env={"PATH": os.environ["PATH"]},
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    exported = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)
    assert exported == dev_stack.env
    lines = dev_stack.env_file.read_text().splitlines()
    assert all(line.startswith("export ") for line in lines) and len(lines) == len(names)


def test_env_text_quotes_values_for_the_shell(tmp_path: Path) -> None:
    from consumer.local.devstack import env_text

    tricky = {"A": "two words", "B": 'it\'s $HOME `x` \\ "q"', "C": "", "D": "a=b;c"}
    path = tmp_path / "tricky.env"
    path.write_text(env_text(tricky))
    done = subprocess.run(
        ["bash", "-c", '. "$1"; printf "%s\\0" "$A" "$B" "$C" "$D"', "bash", str(path)],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.decode().split("\0")[:4] == list(tricky.values())
    assert parse_env_text(env_text(tricky)) == tricky


def test_gcloud_upload_to_the_inbox_becomes_a_job_at_the_service(
    dev_stack: RunningDevStack, tmp_path: Path
) -> None:
    voice = simple_dataset_zip(tmp_path / "voice.zip", files=1, seconds=2.0)
    config_dir = tmp_path / "gcloud-config"
    metadata = "--custom-metadata=model-name=alice,epochs=1"
    dev_stack.gcloud("storage", "cp", metadata, str(voice), dev_stack.env["INBOX_URL"], config_dir=config_dir)

    events = pull_until(dev_stack, config_dir, ".accepted")
    [accepted] = [m for m in events if m["attributes"]["ce-type"].endswith(".accepted")]
    assert accepted["attributes"]["model_name"] == "alice"
    data = json.loads(base64.b64decode(accepted["data"]))
    uploaded = f"{dev_stack.env['INBOX_URL']}voice.zip"
    described = json.loads(
        dev_stack.gcloud("storage", "objects", "describe", uploaded, "--format=json", config_dir=config_dir)
    )
    assert int(data["source"]["generation"]) == int(described["generation"])
    with urlopen(
        f"{dev_stack.env['SERVICE_URL']}/jobs/{accepted['attributes']['job_id']}", timeout=5
    ) as response:
        record = json.loads(response.read())
    assert (record["model_name"], record["spec"]["epochs"]) == ("alice", 1)


def test_events_are_answered_while_a_slice_runs(dev_stack: RunningDevStack, tmp_path: Path) -> None:
    voice = simple_dataset_zip(tmp_path / "long.zip", files=4, seconds=4.0)  # over the 10 s minimum
    config_dir = tmp_path / "gcloud-config"
    metadata = "--custom-metadata=model-name=long,epochs=30"  # one slice of many seconds
    dev_stack.gcloud("storage", "cp", metadata, str(voice), dev_stack.env["INBOX_URL"], config_dir=config_dir)
    events = pull_until(dev_stack, config_dir, ".accepted", model_name="long")
    job_id = next(m["attributes"]["job_id"] for m in events if m["attributes"]["model_name"] == "long")
    service = dev_stack.env["SERVICE_URL"]
    # Jobs of earlier tests in this module may hold the one slot first: the queue serves them in turn.
    lease = wait_for(lambda: get_json(f"{service}/jobs/{job_id}")["lease"], timeout=600)

    started = time.monotonic()
    status = post(service, "/events", b"{not a delivery")
    answered_in = time.monotonic() - started

    assert status == 200 and answered_in < 1.0
    assert get_json(f"{service}/jobs/{job_id}")["lease"] == lease, "the slice ended before /events answered"


def get_json(url: str) -> dict:
    with urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(base_url: str, path: str, body: bytes) -> int:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(value: Callable[[], object], *, timeout: float, every: float = 0.1) -> object:
    """The first truthy `value()`, polled every `every` seconds; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := value():
            return found
        time.sleep(every)
    raise AssertionError(f"still false after {timeout} s")


def test_interrupt_stops_everything_it_started(tmp_path: Path) -> None:
    stack = start_dev_stack(tmp_path, "--split")  # two service processes besides the emulators
    try:
        names = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "SERVICE_URL", "WORKER_URL")
        endpoints = [stack.env[k] for k in names]
        assert len(set(endpoints)) == 4
        assert all(port_is_open(e) for e in endpoints)
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGKILL)
    assert not any(port_is_open(e) for e in endpoints)
    assert not stack.env_file.exists()  # no stale file pointing at servers that are gone


# --- the work queue's dispatcher ---------------------------------------------------------------------
class FlakyEndpoint:
    """A worker answering 503 to the first `failures` deliveries of each task, then 204; it records
    how many deliveries it held at once."""

    def __init__(self, failures: int, hold: float = 0.05) -> None:
        self.deliveries: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.bodies: dict[str, bytes] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                name = self.headers["X-CloudTasks-TaskName"]
                with lock:
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                time.sleep(hold)
                with lock:
                    endpoint.in_flight -= 1
                    endpoint.deliveries[name] += 1
                    endpoint.bodies[name] = body
                    ok = endpoint.deliveries[name] > failures
                    if ok:
                        endpoint.acked.add(name)
                self.send_response(204 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_failed_work_deliveries_are_all_retried_within_the_slots(tmp_path: Path) -> None:
    from consumer.work.tokens import WorkQueue, WorkToken

    endpoint = FlakyEndpoint(failures=3)
    config = DevStackConfig(
        service=False, external_service_url=endpoint.url, worker_slots=2, min_backoff=0.05, max_backoff=0.2
    )
    stack = DevStack(config, log_dir=tmp_path)
    try:
        env = stack.start()
        assert env["WORK_URL"] == f"{endpoint.url}/work"
        assert stack.tasks is not None
        work = WorkQueue(stack.tasks)
        tokens = [WorkToken(f"{i:016x}", 0) for i in range(5)]
        assert all(work.enqueue(t) for t in tokens)
        assert not any(work.enqueue(t) for t in tokens)  # a name is queued once
        deadline = time.monotonic() + 30
        while endpoint.acked != {t.task_name for t in tokens} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stack.stop()
        endpoint.close()
    assert endpoint.acked == {t.task_name for t in tokens}, (
        f"deliveries per task: {dict(endpoint.deliveries)}"
    )
    assert {n: WorkToken.decode(b) for n, b in endpoint.bodies.items()} == {t.task_name: t for t in tokens}
    assert endpoint.max_in_flight == 2  # WORKER_SLOTS deliveries at once, never more


# --- nothing outlives its starter ------------------------------------------------------------------------
def process_is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # dead, waiting for init to reap it


FIXTURE_USER = """
import json, sys, time
from pathlib import Path
from tests.emulators import running_fake_gcs, running_pubsub_emulator
logs = Path(sys.argv[1])
with running_pubsub_emulator(logs) as emulator, running_fake_gcs(
    logs, emulator=emulator, notification_topic="gcs-notifications"
) as gcs:
    pids = [emulator.process.popen.pid, gcs.process.popen.pid]
    print(json.dumps({"pids": pids, "endpoints": [emulator.host, gcs.url]}), flush=True)
    time.sleep(300)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_emulators_die_with_a_killed_test_run(tmp_path: Path) -> None:
    user = subprocess.Popen(
        [sys.executable, "-c", FIXTURE_USER, str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert user.stdout is not None
        started = json.loads(user.stdout.readline())
        assert all(port_is_open(e) for e in started["endpoints"])
    finally:
        user.kill()  # SIGKILL: no finally block, no atexit, no fixture teardown runs
        user.wait()
    wait_for(lambda: all(process_is_gone(pid) for pid in started["pids"]), timeout=10)
    # A killed multi-threaded server shows as a zombie before its last thread has closed its sockets.
    wait_for(lambda: not any(port_is_open(e) for e in started["endpoints"]), timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_killed_dev_stack_leaves_nothing_running(tmp_path: Path) -> None:
    stack = start_dev_stack(tmp_path)
    endpoints = [stack.env[k] for k in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "SERVICE_URL")]
    os.kill(stack.process.pid, signal.SIGKILL)  # the dev command only, not its process group
    stack.process.wait()
    wait_for(lambda: not any(port_is_open(e) for e in endpoints), timeout=15)
