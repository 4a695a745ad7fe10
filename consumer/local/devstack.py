"""`python -m consumer dev`: the whole stack on this machine, wired as in production, nothing from Google.

Starts the official Pub/Sub emulator, fake-gcs-server publishing OBJECT_FINALIZE notifications of
the inbox bucket to the intake topic (as a GCS notification config does), the buckets, topics and
subscriptions (intake push -> /events, work push -> /work, results and dead letters pulled), and
the service under gunicorn. It then prints (and writes to --env-file) the KEY=VALUE lines a user
or a script needs, so that these work as on Google Cloud:

    set -a; . ./dev.env; set +a
    gcloud storage cp --custom-metadata=model-name=alice,epochs=3 voice.zip $INBOX_URL
    gcloud pubsub subscriptions pull $RESULTS_SUBSCRIPTION --auto-ack

Ctrl-C or SIGTERM stops everything it started, and nothing outlives it even when it is killed
outright (SIGKILL, a test run's timeout): see `consumer.local.processes`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.local.processes import (
    ManagedProcess,
    free_port,
    ready_or_stopped,
    spawn,
    start_fake_gcs,
    start_pubsub_emulator,
)

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
    # None: push subscriptions get no dead-letter policy. On the emulator a failed push comes back
    # about every second (see `_subscribe`), so any limit (5-100) would dead-letter a work token that
    # merely waits behind a running slice; the service fails a broken job itself after
    # MAX_CONSECUTIVE_FAILURES slices.
    max_delivery_attempts: int | None = None
    service: bool = True  # False: emulators and wiring only (run the service yourself)
    external_service_url: str | None = None  # with service=False: where intake and work pushes go
    push_subscriptions: bool = True  # False: nothing pushes to the service (a driver posts itself)
    service_env: Mapping[str, str] = field(default_factory=dict)  # extra variables for the service
    service_port: int = 0  # 0: a free port
    service_log: bool = False  # True: the service's log lines go to log_dir/service.log, not stdout
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
class DevStack:
    config: DevStackConfig = field(default_factory=DevStackConfig)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rvc-devstack-")))
    processes: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the KEY=VALUE lines

    def start(self) -> dict[str, str]:
        """Starts every part, waiting for each; on any failure stops what it started and re-raises."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.env

    def _start(self) -> None:
        from consumer.adapters.messaging import subscription_path
        from consumer.adapters.messaging.admin import ensure_topic

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
                start_service(
                    port=port,
                    env={**service_env, **cfg.service_env},
                    work_root=self.log_dir / "work",
                    log_path=self.log_dir / "service.log" if cfg.service_log else None,
                    timeout=timeout,
                )
            )
        self._subscribe(pubsub_host, service_url if cfg.push_subscriptions else "")

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
) -> ManagedProcess:
    """The service exactly as Cloud Run runs it, `python -m consumer serve` (gunicorn, one gthread
    worker whose threads keep /events and /healthz answering while a slice runs, no worker timeout),
    but on loopback only and, unless the environment says otherwise, with the tiny preset and no
    downloaded weights. Its JSON log lines go to `log_path` (default: this process's stdout)."""
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
    cmd = [sys.executable, "-m", "consumer", "serve", "--threads", str(threads)]
    process = spawn("service", cmd, env=service_env, log_path=log_path, cwd=REPO_ROOT)
    return ready_or_stopped(process, f"http://127.0.0.1:{port}/healthz", timeout=timeout)


# --- the command ----------------------------------------------------------------------------------
def env_text(env: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in env.items())


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    from rvc_core.atomic import write_text

    write_text(path, env_text(env))  # appears complete or not at all: scripts wait for it as the ready signal


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
