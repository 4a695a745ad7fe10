"""Pytest fixtures running the real stand-ins: the official Pub/Sub emulator and fake-gcs-server.

Registered for every test module through `pytest_plugins` in conftest.py. Servers bind free
loopback ports, start once per session (`pubsub_emulator`, `fake_gcs`) and are always stopped,
whole process groups included, even when a test fails. They also die with the test run when it is
killed outright (a timeout's SIGKILL): `consumer.local.processes.spawn` arms the kernel's parent-death
signal, and the emulator's java is started directly, not as a grandchild behind gcloud. A server
that cannot start is an error, never a skip. Also here: fault-injecting proxies for storage (HTTP
503s on demand) and for Pub/Sub (a connection cut), and the environment the real gcloud CLI needs
to talk to the emulators.

Facts observed with these servers (gcloud 528, emulator 0.8.20, fake-gcs-server in the wheel 0.1.1):
- fake-gcs-server notifications match EVENTS.md §2 except: the object `id` has `#` before the
  generation, no `notificationConfig` attribute, `eventTime` in whole seconds, no `metageneration`
  in the data; the emulator never sets `deliveryAttempt` unless a dead-letter policy exists.
- `gcloud storage cp` and `gcloud pubsub subscriptions pull` work with the endpoint overrides and
  CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true; uploads over 150 MiB need
  CLOUDSDK_STORAGE_PARALLEL_COMPOSITE_UPLOAD_ENABLED=False (see consumer.local.devstack.gcloud_env).
- The emulator ignores subscription filters: every subscription on a topic gets every message.
  The session's fake-gcs-server notifies for all buckets, so filter on `bucketId` yourself (or
  start a dedicated server with `running_fake_gcs(..., event_bucket=...)`).
- With a retry policy, the emulator stops redelivering a subscription's messages once several are
  in backoff at once; without one it redelivers a failed push about every second. Push
  subscriptions in tests (and the dev stack) therefore have none.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from consumer.adapters.messaging.admin import ensure_topic
from consumer.local.devstack import gcloud_env
from consumer.local.processes import ManagedProcess, free_port, start_fake_gcs, start_pubsub_emulator

PROJECT = "rvc-test"
NOTIFICATION_TOPIC = "gcs-notifications"


def unique_name(prefix: str) -> str:
    """A name valid for buckets, topics and subscriptions, unique within the session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the servers ----------------------------------------------------------------------------------
@dataclass
class PubSubEmulator:
    host: str  # "127.0.0.1:PORT", the value of PUBSUB_EMULATOR_HOST
    project: str
    process: ManagedProcess


@dataclass
class FakeGcs:
    url: str  # "http://127.0.0.1:PORT", the value of STORAGE_EMULATOR_HOST
    process: ManagedProcess
    notification_topic: str | None  # full topic path its finalize notifications go to


@contextlib.contextmanager
def running_pubsub_emulator(log_dir: Path, *, project: str = PROJECT) -> Iterator[PubSubEmulator]:
    port = free_port()
    process = start_pubsub_emulator(port=port, log_path=log_dir / "pubsub-emulator.log")
    try:
        yield PubSubEmulator(host=f"127.0.0.1:{port}", project=project, process=process)
    finally:
        process.stop()


@contextlib.contextmanager
def running_fake_gcs(
    log_dir: Path,
    *,
    emulator: PubSubEmulator | None = None,
    notification_topic: str | None = None,
    event_bucket: str | None = None,
) -> Iterator[FakeGcs]:
    """fake-gcs-server; with `emulator` and `notification_topic` (created here if missing) it
    publishes OBJECT_FINALIZE notifications there (only for `event_bucket`, if given)."""
    topic_path = None
    if notification_topic is not None:
        if emulator is None:
            raise ValueError("notifications need the Pub/Sub emulator")
        topic_path = ensure_topic(emulator.project, notification_topic, emulator_host=emulator.host)
    port = free_port()
    process = start_fake_gcs(
        port=port,
        log_path=log_dir / f"fake-gcs-server-{port}.log",
        pubsub_host=emulator.host if emulator else None,
        project=emulator.project if emulator else None,
        notification_topic=notification_topic,
        event_bucket=event_bucket,
    )
    try:
        yield FakeGcs(url=f"http://127.0.0.1:{port}", process=process, notification_topic=topic_path)
    finally:
        process.stop()


# --- fault injection ------------------------------------------------------------------------------
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length", "host",
}  # fmt: skip


@dataclass
class _Fault:
    remaining: int  # requests still to hit; -1 = every request until heal()
    status: int
    forward: bool  # True: the request reaches the server, only the reply is replaced ("lost")
    method: str | None
    path_contains: str | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


@dataclass
class HttpFaultProxy:
    """An HTTP proxy in front of fake-gcs-server that answers errors on demand.

    Point STORAGE_EMULATOR_HOST at `url`. `fail_next(3)` answers 503 to the next three requests
    without forwarding them; `lose_replies_next(1)` forwards the next request and then answers 503,
    as when a reply is lost after the server acted; `fail_always()` until `heal()`.
    """

    upstream: str
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status sent)
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(
        self, n: int, *, status: int = 503, method: str | None = None, path_contains: str | None = None
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(n, status, False, method, path_contains))

    def lose_replies_next(
        self, n: int, *, method: str | None = None, path_contains: str | None = None
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(n, 503, True, method, path_contains))

    def fail_always(self, *, status: int = 503) -> None:
        with self._lock:
            self._faults.append(_Fault(-1, status, False, None, None))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def injected(self) -> int:
        """How many replies were replaced by an injected error."""
        with self._lock:
            return sum(1 for *_, status in self.requests if status < 0)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining != 0 and fault.matches(method, path):
                    if fault.remaining > 0:
                        fault.remaining -= 1
                    return fault
            return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def start(self) -> HttpFaultProxy:
        proxy = self
        upstream = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _injected(self, status: int) -> None:
                body = json.dumps(
                    {"error": {"code": status, "message": "injected by HttpFaultProxy"}}
                ).encode()
                proxy._record(self.command, self.path, -status)  # before replying: tests count at once
                self._reply(status, [("Content-Type", "application/json")], body)

            def _handle(self) -> None:
                body = self._read_body()
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and not fault.forward:
                    self._injected(fault.status)
                    return
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                if fault is not None:
                    self._injected(fault.status)
                    return
                out = []
                for key, value in response.getheaders():
                    if key.lower() in _HOP_BY_HOP:
                        continue
                    if key.lower() == "location":  # resumable upload sessions must come back through us
                        value = value.replace(proxy.upstream.rstrip("/"), proxy.url)
                    out.append((key, value))
                proxy._record(self.command, self.path, response.status)
                self._reply(response.status, out, data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="http-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TcpFaultProxy:
    """A TCP relay in front of the Pub/Sub emulator (gRPC) that can cut the line for a while.

    Point PUBSUB_EMULATOR_HOST at `host`. `cut_for(s)` closes every open connection and refuses new
    ones for `s` seconds: clients see UNAVAILABLE, as during a network blip or a server restart.
    """

    def __init__(self, upstream_host: str) -> None:
        host, port = upstream_host.rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._blocked_until = 0.0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.refused = 0  # connections refused while cut
        threading.Thread(target=self._accept_loop, name="tcp-fault-proxy", daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def cut_for(self, seconds: float) -> None:
        with self._lock:
            self._blocked_until = time.monotonic() + seconds
            victims, self._open = self._open, set()
        for sock in victims:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                blocked = time.monotonic() < self._blocked_until
            if blocked:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut_for(0)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """The official Pub/Sub emulator for the whole session (project `rvc-test`)."""
    with running_pubsub_emulator(tmp_path_factory.mktemp("pubsub-emulator")) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def fake_gcs(pubsub_emulator: PubSubEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """fake-gcs-server for the whole session, notifying finalizes of every bucket on `gcs-notifications`."""
    log_dir = tmp_path_factory.mktemp("fake-gcs")
    with running_fake_gcs(log_dir, emulator=pubsub_emulator, notification_topic=NOTIFICATION_TOPIC) as server:
        yield server


@pytest.fixture
def gcs_fault_proxy(fake_gcs: FakeGcs) -> Iterator[HttpFaultProxy]:
    proxy = HttpFaultProxy(fake_gcs.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def pubsub_fault_proxy(pubsub_emulator: PubSubEmulator) -> Iterator[TcpFaultProxy]:
    proxy = TcpFaultProxy(pubsub_emulator.host)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def emulator_env(
    pubsub_emulator: PubSubEmulator, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Sets PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT and the CLOUDSDK_*
    overrides in this process for the test; returns them."""
    env = gcloud_env(
        project=pubsub_emulator.project, pubsub_host=pubsub_emulator.host, storage_url=fake_gcs.url
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def gcloud_cli_env(pubsub_emulator: PubSubEmulator, fake_gcs: FakeGcs, tmp_path: Path) -> dict[str, str]:
    """A complete environment for running the real `gcloud` against the emulators, with its own
    config folder so nothing of the user's gcloud setup is read or changed."""
    env = {
        **os.environ,
        **gcloud_env(
            project=pubsub_emulator.project, pubsub_host=pubsub_emulator.host, storage_url=fake_gcs.url
        ),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    }
    return env


# --- the service with a stand-in trainer ----------------------------------------------------------------
FAKE_SERVICE_COMMAND = (sys.executable, "-m", "tests.emulators", "serve")


def serve_with_fake_trainer(argv: list[str]) -> int:
    """`python -m consumer serve` (gunicorn, the real app and wiring) with the fake trainer."""
    import consumer.work.slices as slices
    from consumer.__main__ import main
    from tests.factories_consumer import FakeTrainer

    seconds = float(os.environ.get("FAKE_SECONDS_PER_EPOCH", "0.05"))
    slices.default_trainer = lambda: FakeTrainer(epochs_per_call=1_000_000, seconds_per_epoch=seconds)
    return main(argv)  # gunicorn forks its worker from this process: the stand-in goes with it


if __name__ == "__main__":
    sys.exit(serve_with_fake_trainer(sys.argv[1:]))
