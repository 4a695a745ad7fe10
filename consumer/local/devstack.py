"""`python -m consumer dev`: the whole stack on this machine, wired as in production, nothing from Google.

Starts the official Pub/Sub emulator, fake-gcs-server publishing OBJECT_FINALIZE notifications of
the inbox bucket to the intake topic (as a GCS notification config does), the buckets, topics and
subscriptions (intake push -> /events, results and dead letters pulled), the service under
gunicorn, and, in this process, a dispatcher of the folder-backed work queue (TASK_QUEUE=file://…)
that delivers work tasks to /work as Cloud Tasks would: at most WORKER_SLOTS at once, each waiting
up to DISPATCH_DEADLINE_SECONDS, retried without limit. Like the emulators, it plays Google Cloud.

Topologies: by default one service process of role `all`; with `--split`, role `api` (the intake
push target, /jobs) and role `worker` (the queue's target) as two processes on two ports.

It then prints (and writes to --env-file) `export NAME=value` lines a user or a script needs, so
that these work as on Google Cloud:

    . ./.dev.env
    gcloud storage cp --custom-metadata=model-name=alice,epochs=3 voice.zip $INBOX_URL
    gcloud pubsub subscriptions pull $RESULTS_SUBSCRIPTION --auto-ack
    curl $SERVICE_URL/jobs/JOB_ID

Ctrl-C or SIGTERM stops everything it started, and nothing outlives it even when it is killed
outright (SIGKILL, a test run's timeout): see `consumer.local.processes`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.local.processes import (
    ManagedProcess,
    free_port,
    ready_or_stopped,
    spawn,
    start_fake_gcs,
    start_pubsub_emulator,
)

if TYPE_CHECKING:
    from consumer.adapters.tasks.local import LocalDispatcher, LocalTaskQueue

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DevStackConfig:
    project: str = "rvc-local"
    inbox_bucket: str = "inbox"
    state_bucket: str = "state"
    models_bucket: str = "models"
    inbox_prefix: str = "datasets/"
    intake_topic: str = "rvc-intake"
    results_topic: str = "rvc-results"
    dead_letter_topic: str = "rvc-dead-letter"
    intake_subscription: str = "rvc-intake-push"
    results_subscription: str = "rvc-results-pull"
    dead_letter_subscription: str = "rvc-dead-letter-pull"
    intake_ack_deadline: int = 60  # seconds; intake answers quickly
    # None: the intake push subscription gets no dead-letter policy (see `_subscribe`).
    max_delivery_attempts: int | None = None
    # Topology: False, one process of role `all` (the default, as the product is described); True,
    # role `api` (intake and status, the push target) and role `worker` (slices, the queue's target)
    # as two processes on two ports.
    split: bool = False
    worker_slots: int = 1  # the queue's max concurrent dispatches (WORKER_SLOTS)
    dispatch_deadline_seconds: float = 1800.0  # how long a delivery waits for /work's answer
    min_backoff: float = 0.1  # the local queue's retry backoff, s (Cloud Tasks: 10 s to 300 s)
    max_backoff: float = 2.0
    service: bool = True  # False: emulators, wiring and the queue only (run the service yourself)
    external_service_url: str | None = None  # with service=False: where intake pushes go
    external_worker_url: str | None = None  # with service=False: where tasks go (default: the above)
    push_subscriptions: bool = True  # False: nothing pushes to the service (a driver posts itself)
    dispatcher: bool = True  # False: no dispatcher runs (a driver delivers the tasks itself)
    service_env: Mapping[str, str] = field(default_factory=dict)  # extra variables for the service
    # The serving command, to which `--threads N --role R` is appended; () is `python -m consumer
    # serve`. Tests put a stand-in trainer behind the same server this way.
    service_command: tuple[str, ...] = ()
    service_port: int = 0  # 0: a free port (role all, or api when split)
    worker_port: int = 0  # 0: a free port (split only)
    service_log: bool = False  # True: the services' log lines go to log_dir/<role>.log, not stdout
    startup_timeout: float = 180.0  # seconds for each part to become ready


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
class ServiceSpec:
    """How one service process is (re)started: its role, port and environment."""

    role: str  # all, api or worker
    port: int
    env: dict[str, str]
    log_path: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class DevStack:
    config: DevStackConfig = field(default_factory=DevStackConfig)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rvc-devstack-")))
    processes: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the variables of the env file
    services: dict[str, ServiceSpec] = field(default_factory=dict)  # by role
    dispatcher: LocalDispatcher | None = None
    tasks: LocalTaskQueue | None = None

    def start(self) -> dict[str, str]:
        """Starts every part, waiting for each; on any failure stops what it started and re-raises."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.env

    @property
    def task_dir(self) -> Path:
        return self.log_dir / "tasks"

    def _start(self) -> None:
        from consumer.adapters.messaging import subscription_path
        from consumer.adapters.messaging.admin import ensure_topic
        from consumer.adapters.tasks.local import LocalTaskQueue

        cfg = self.config
        timeout = cfg.startup_timeout
        pubsub_host = f"127.0.0.1:{free_port()}"
        self.processes.append(
            start_pubsub_emulator(
                port=int(pubsub_host.rsplit(":", 1)[1]),
                log_path=self.log_dir / "pubsub-emulator.log",
                timeout=timeout,
            )
        )
        for topic in (cfg.intake_topic, cfg.results_topic, cfg.dead_letter_topic):
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
        self.tasks = LocalTaskQueue(self.task_dir)  # plays Cloud Tasks: any process may create tasks

        service_url = (cfg.external_service_url or "").rstrip("/")
        worker_url = (cfg.external_worker_url or service_url).rstrip("/")
        if cfg.service:
            roles = (
                {"api": cfg.service_port, "worker": cfg.worker_port}
                if cfg.split
                else {"all": cfg.service_port}
            )
            ports = {role: port or free_port() for role, port in roles.items()}
            service_url = f"http://127.0.0.1:{ports.get('api', ports.get('all'))}"
            worker_url = f"http://127.0.0.1:{ports.get('worker', ports.get('all'))}"
        service_env = {
            **base,
            "INBOX_BUCKET": cfg.inbox_bucket,
            "INBOX_PREFIX": cfg.inbox_prefix,
            "STATE_BUCKET": f"gs://{cfg.state_bucket}",
            "MODELS_BUCKET": f"gs://{cfg.models_bucket}",
            "RESULTS_TOPIC": cfg.results_topic,
            "TASK_QUEUE": f"file://{self.task_dir}",
            "WORKER_SLOTS": str(cfg.worker_slots),
            "DISPATCH_DEADLINE_SECONDS": f"{cfg.dispatch_deadline_seconds:g}",
        }
        if worker_url:
            service_env["WORK_URL"] = f"{worker_url}/work"
        if cfg.service:
            for role, port in ports.items():
                log_path = self.log_dir / f"{role}.log" if cfg.service_log else None
                env = {**service_env, **cfg.service_env, "WORK_ROOT": str(self.log_dir / "work" / role)}
                self.services[role] = ServiceSpec(role, port, env, log_path)
            for role in self.services:
                self.start_service(role)
        self._subscribe(pubsub_host, service_url if cfg.push_subscriptions else "")
        if cfg.dispatcher and worker_url:
            self.dispatcher = self._dispatcher(f"{worker_url}/work").start()

        self.env = {
            **service_env,
            "INBOX_URL": f"gs://{cfg.inbox_bucket}/{cfg.inbox_prefix}",
            "STATE_URL": f"gs://{cfg.state_bucket}/",
            "MODELS_URL": f"gs://{cfg.models_bucket}/",
            "RESULTS_SUBSCRIPTION": subscription_path(cfg.project, cfg.results_subscription),
            "DEAD_LETTER_SUBSCRIPTION": subscription_path(cfg.project, cfg.dead_letter_subscription),
            "SERVICE_URL": service_url,  # intake and status: role all, or api when split
            "WORKER_URL": worker_url,  # slices: the same service, or the worker when split
            "DEVSTACK_TOPOLOGY": "split" if cfg.split else "all",
            "DEVSTACK_LOGS": str(self.log_dir),
        }

    def _dispatcher(self, work_url: str) -> LocalDispatcher:
        """Delivers the queue's tasks to the worker's /work as Cloud Tasks would: at most
        `worker_slots` at once, each waiting up to the dispatch deadline, retried without limit."""
        from consumer.adapters.tasks.local import LocalDispatcher, http_deliverer

        cfg = self.config
        assert self.tasks is not None
        return LocalDispatcher(
            self.tasks,
            http_deliverer(work_url, timeout=cfg.dispatch_deadline_seconds),
            max_concurrent=cfg.worker_slots,
            min_backoff=cfg.min_backoff,
            max_backoff=cfg.max_backoff,
        )

    def start_service(self, role: str) -> ManagedProcess:
        """(Re)starts the service process of `role` on its port, as configured at start."""
        spec = self.services[role]
        process = start_service(
            port=spec.port,
            env=spec.env,
            work_root=Path(spec.env["WORK_ROOT"]),
            log_path=spec.log_path,
            timeout=self.config.startup_timeout,
            role=spec.role,
            command=self.config.service_command,
        )
        self.processes.append(process)
        return process

    def service_process(self, role: str) -> ManagedProcess:
        """The live (or last started) process of `role`."""
        return next(p for p in reversed(self.processes) if p.name == f"service-{role}")

    def kill_service(self, role: str) -> None:
        """SIGKILL to the process group of `role`'s service, as when an instance vanishes."""
        process = self.service_process(role)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)
        self.processes.remove(process)

    def _subscribe(self, pubsub_host: str, service_url: str) -> None:
        """Intake pushes to the service (role all or api, once it is up); results and dead letters
        are pulled. Work does not travel on Pub/Sub: it waits in the task queue."""
        from consumer.adapters.messaging.admin import SubscriptionSpec, ensure_subscription

        cfg = self.config
        specs = [
            SubscriptionSpec(cfg.results_subscription, cfg.results_topic, ack_deadline_seconds=60),
            SubscriptionSpec(cfg.dead_letter_subscription, cfg.dead_letter_topic, ack_deadline_seconds=60),
        ]
        if service_url:
            # No retry policy here, unlike production (Terraform sets a 10-600 s backoff): the emulator
            # (0.8.20) stops redelivering a subscription's messages once several of them are in
            # retry-policy backoff at once (seen: three 503s each for five messages, then silence).
            # Without a policy it redelivers a failed push after about a second, indefinitely.
            push: dict[str, Any] = {}
            if cfg.max_delivery_attempts is not None:
                push.update(
                    dead_letter_topic=cfg.dead_letter_topic, max_delivery_attempts=cfg.max_delivery_attempts
                )
            specs.append(
                SubscriptionSpec(
                    cfg.intake_subscription,
                    cfg.intake_topic,
                    push_endpoint=f"{service_url}/events",
                    ack_deadline_seconds=cfg.intake_ack_deadline,
                    **push,
                )
            )
        for spec in specs:
            ensure_subscription(cfg.project, spec, emulator_host=pubsub_host)

    def stop(self) -> None:
        """Stops dispatching, then the services (a slice may be finishing), then storage, then
        Pub/Sub. Logs and the queue's folder stay in `log_dir`; the services' scratch dirs go."""
        if self.dispatcher is not None:
            self.dispatcher.stop(wait=False)  # a delivery in flight ends when its service stops
            self.dispatcher = None
        while self.processes:
            process = self.processes.pop()
            process.stop(grace=15.0 if process.name.startswith("service") else 5.0)
        shutil.rmtree(self.log_dir / "work", ignore_errors=True)

    def dead_process(self) -> ManagedProcess | None:
        return next((p for p in self.processes if not p.alive()), None)


def create_buckets(storage_url: str, project: str, names: list[str]) -> None:
    from google.api_core.exceptions import Conflict

    from consumer.adapters.storage.gcs import default_client

    client = default_client(storage_url, project=project)
    for name in names:
        with contextlib.suppress(Conflict):
            client.create_bucket(name, timeout=10)


def start_service(
    *,
    port: int,
    env: Mapping[str, str],
    work_root: Path,
    timeout: float,
    log_path: Path | None = None,
    threads: int = 8,
    role: str = "all",
    command: Sequence[str] = (),
) -> ManagedProcess:
    """The service exactly as Cloud Run runs it, `python -m consumer serve --role ROLE` (gunicorn,
    one gthread worker whose threads keep /events, /jobs and /healthz answering while a slice runs,
    no worker timeout), but on loopback only and, unless the environment says otherwise, with the
    tiny preset and no downloaded weights. Its JSON log lines go to `log_path` (default: this
    process's stdout)."""
    service_env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)}
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
        *(command or (sys.executable, "-m", "consumer", "serve")),
        "--threads",
        str(threads),
        "--role",
        role,
    ]
    process = spawn(f"service-{role}", cmd, env=service_env, log_path=log_path, cwd=REPO_ROOT)
    return ready_or_stopped(process, f"http://127.0.0.1:{port}/healthz", timeout=timeout)


# --- the command ----------------------------------------------------------------------------------
def env_text(env: Mapping[str, str]) -> str:
    """`export NAME=value` lines, each value quoted for the shell: the file can be `source`d."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def parse_env_text(text: str) -> dict[str, str]:
    """The variables of `env_text`'s lines (what a shell sourcing them would set)."""
    env = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep:
                env[key] = value
    return env


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    from rvc_core.atomic import write_text

    write_text(path, env_text(env))  # appears complete or not at all: scripts wait for it as the ready signal


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumer dev",
        description="Runs the Pub/Sub emulator, fake-gcs-server, the work queue and the service, "
        "wired as in production.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        help="also write the `export NAME=value` lines to this file once ready (removed on exit)",
    )
    parser.add_argument("--project", default=DevStackConfig.project, help="emulator project id")
    parser.add_argument(
        "--split",
        action="store_true",
        help="run role api (intake, status) and role worker (slices) as two processes, not one of role all",
    )
    parser.add_argument("--port", type=int, default=0, help="service (or api) port (default: a free one)")
    parser.add_argument("--worker-port", type=int, default=0, help="with --split: the worker's port")
    parser.add_argument(
        "--slots", type=int, default=1, help="work tasks dispatched at once (WORKER_SLOTS; default 1)"
    )
    parser.add_argument(
        "--dispatch-deadline",
        type=float,
        default=DevStackConfig.dispatch_deadline_seconds,
        help="seconds a work delivery waits for its answer (DISPATCH_DEADLINE_SECONDS; 15-1800)",
    )
    parser.add_argument(
        "--no-service", action="store_true", help="start emulators, wiring and the queue only"
    )
    parser.add_argument(
        "--service-url",
        help="with --no-service: push intake deliveries (and work tasks) to this running service",
    )
    parser.add_argument("--worker-url", help="with --no-service: deliver work tasks to this running worker")
    args = parser.parse_args(argv)
    if (args.service_url or args.worker_url) and not args.no_service:
        parser.error("--service-url and --worker-url need --no-service")
    if args.worker_port and not args.split:
        parser.error("--worker-port needs --split")
    if not 1 <= args.slots <= 1000:
        parser.error("--slots must be from 1 to 1000")
    if not 15 <= args.dispatch_deadline <= 1800:
        parser.error("--dispatch-deadline must be from 15 to 1800")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = DevStackConfig(
        project=args.project,
        split=args.split,
        worker_slots=args.slots,
        dispatch_deadline_seconds=args.dispatch_deadline,
        service=not args.no_service,
        service_port=args.port,
        worker_port=args.worker_port,
        external_service_url=args.service_url,
        external_worker_url=args.worker_url,
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
