"""`rvc-trainer`: submit a voice dataset, follow its job, inspect, download, cancel.

    rvc-trainer submit voice.zip --model-name alice --epochs 200 [--wait] [--download DIR]
    rvc-trainer watch JOB | status JOB | list [--model NAME] | download JOB DIR | cancel JOB

Settings come from flags, `--env-file` (the dev stack's file) or the environment: INBOX_URL,
RESULTS_TOPIC, SERVICE_URL, STATE_URL, GOOGLE_CLOUD_PROJECT (and the emulator variables).
Exit status: 0 done (a followed job succeeded), 1 the job failed or the command did, 2 bad usage or
configuration, 130 detached by Ctrl-C (the job goes on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from consumer.client.config import ClientConfig, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 130
# `--flag` → custom metadata key, as `gcloud storage cp --custom-metadata=KEY=VALUE` would set it.
METADATA_OPTIONS: dict[str, str] = {
    "model_name": "model-name",
    "epochs": "epochs",
    "sample_rate": "sample-rate",
    "version": "version",
    "f0_method": "f0-method",
    "batch_size": "batch-size",
    "save_every": "save-every",
    "author": "author",
}
DOWNLOADED_KINDS = ("pth", "index", "preview", "report", "report_png")


class CommandError(Exception):
    """The command cannot go on (exit 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = load_config(vars(args))
        return int(args.run(args, config))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


# --- commands -------------------------------------------------------------------------------------
def submit(args: argparse.Namespace, config: ClientConfig) -> int:
    from consumer.client import storage
    from rvc_core.names import MODEL_NAME_ACCEPTED, is_model_name

    dataset = Path(args.dataset)
    if not dataset.is_file():
        raise CommandError(f"no such file: {dataset}")
    if not is_model_name(args.model_name):
        raise ConfigError(f"--model-name: {MODEL_NAME_ACCEPTED}")
    inbox = config.need("inbox")
    try:
        bucket, name = storage.destination(inbox, dataset, args.object_name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    metadata = upload_metadata(args)
    client = storage.storage_client()
    if not args.wait:
        uploaded = storage.upload(client, dataset, bucket, name, metadata)
        print(uploaded.job_id)
        hint = reattach(uploaded.job_id, config)
        print(f"uploaded {uploaded.uri}#{uploaded.generation}; follow it: {hint}", file=sys.stderr)
        return EXIT_OK
    # The subscription exists before the upload: no event of the job can be published before it.
    with open_subscription(config, on="model_name", value=args.model_name) as subscription:
        uploaded = storage.upload(client, dataset, bucket, name, metadata)
        print(uploaded.job_id, flush=True)
        print(f"uploaded {uploaded.uri}#{uploaded.generation}", file=sys.stderr, flush=True)
        return follow(uploaded.job_id, subscription, config, args)


def watch(args: argparse.Namespace, config: ClientConfig) -> int:
    with open_subscription(config, on="job_id", value=args.job) as subscription:
        if job_record(config, args.job) is None:
            raise CommandError(f"no job {args.job}")
        return follow(args.job, subscription, config, args)


def status(args: argparse.Namespace, config: ClientConfig) -> int:
    from consumer.client.display import details

    record = job_record(config, args.job)
    if record is None:
        raise CommandError(f"no job {args.job}")
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else details(record))
    return EXIT_OK


def list_jobs(args: argparse.Namespace, config: ClientConfig) -> int:
    from consumer.client import storage
    from consumer.client.display import summary

    records = storage.list_records(storage.storage_client(), config.need("state_url"), args.model)
    for record in records:
        print(json.dumps(record, sort_keys=True) if args.json else summary(record))
    return EXIT_OK


def download(args: argparse.Namespace, config: ClientConfig) -> int:
    record = job_record(config, args.job)
    if record is None:
        raise CommandError(f"no job {args.job}")
    if record.get("status") != "succeeded":
        raise CommandError(f"job {args.job} is {record.get('status')}: no model to download")
    for path in fetch_artifacts(record.get("artifacts") or {}, Path(args.directory)):
        print(path)
    return EXIT_OK


def cancel(args: argparse.Namespace, config: ClientConfig) -> int:
    from consumer.client.service import Service, ServiceError

    service = Service(config.need("service_url"), authenticate=not config.service_is_local())
    try:
        answer = service.cancel(args.job)
    except ServiceError as err:
        raise CommandError(str(err)) from None
    error = answer.body.get("error") or {}
    if answer.status in (200, 202):
        print(
            f"cancel requested for {args.job}: a running slice stops in seconds; the job ends `cancelled`",
            file=sys.stderr,
        )
        return EXIT_OK
    if answer.status == 409:
        raise CommandError(
            f"job {args.job} has already finished ({answer.body.get('status', error.get('message', ''))})"
        )
    if answer.status == 404 and error.get("code") == "not_found":
        raise CommandError(f"no job {args.job}")
    raise CommandError(f"cancel answered {answer.status}: {error.get('message') or answer.body}")


# --- following --------------------------------------------------------------------------------------
def follow(job_id: str, subscription: Any, config: ClientConfig, args: argparse.Namespace) -> int:
    """Shows the job on a bar until it ends (0 succeeded, 1 failed); Ctrl-C detaches (130)."""
    from consumer.client.display import JobBar
    from consumer.client.follow import Watcher

    bar = JobBar(job_id)
    events_out = sys.stdout if args.json else None

    def on_event(result: Any) -> None:
        if events_out is not None:  # one write per event: a reader never sees half a line
            line = {"id": result.id, "kind": result.kind, "job_id": job_id, "data": result.data}
            events_out.write(json.dumps(line, sort_keys=True) + "\n")
            events_out.flush()
        bar.event(result.kind, result.data)

    watcher = Watcher(
        job_id,
        subscription,
        lambda: job_record(config, job_id),
        on_record=bar.record,
        on_event=on_event,
        poll_seconds=args.poll,
    )
    with ctrl_c_flag() as interrupted:
        try:
            outcome = watcher.run(stopped=interrupted.is_set)
        except KeyboardInterrupt:
            outcome = None
    bar.close()
    if outcome is None:
        print(f"\ndetached: job {job_id} goes on. Re-attach with:\n  {reattach(job_id, config)}",
              file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_DETACHED
    if outcome.status != "succeeded":
        error = outcome.error or {}
        code, message = error.get("code", outcome.status), error.get("message", "")
        print(f"job {job_id} {outcome.status}: {code}: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"job {job_id} succeeded", file=sys.stderr)
    if args.download:
        for path in fetch_artifacts(outcome.artifacts, Path(args.download)):
            print(path)
    return EXIT_OK


@contextlib.contextmanager
def ctrl_c_flag() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets the flag: Python drops an exception
    raised while a finaliser runs (a gRPC channel's, say), and the follower then still stops at its
    next check instead of following the job to its end."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield interrupted
        return

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def open_subscription(config: ClientConfig, *, on: str, value: str) -> Any:
    from consumer.adapters.messaging.admin import subscriber_admin
    from consumer.client.follow import Subscription

    topic = config.need("results_topic")
    project = config.project or default_project()
    subscription = Subscription(subscriber_admin(config.pubsub_emulator), project, topic, on=on, value=value)
    try:
        return subscription.create()
    except Exception as err:
        subscription.close()
        raise CommandError(f"cannot subscribe to {subscription.topic}: {err}") from None


def default_project() -> str:
    import google.auth

    try:
        _, project = google.auth.default()
    except Exception:
        project = None
    if not project:
        raise ConfigError("--project or $GOOGLE_CLOUD_PROJECT is needed")
    return str(project)


def job_record(config: ClientConfig, job_id: str) -> dict[str, Any] | None:
    """From the service (with the queue position) when SERVICE_URL is set, else the state bucket."""
    if config.service_url:
        from consumer.client.service import Service, ServiceError

        try:
            return Service(config.service_url, authenticate=not config.service_is_local()).job(job_id)
        except ServiceError as err:
            if not config.state_url:
                raise CommandError(str(err)) from None
    from consumer.client import storage

    return storage.read_record(storage.storage_client(), config.need("state_url"), job_id)


def fetch_artifacts(artifacts: dict[str, str], directory: Path) -> list[Path]:
    from consumer.client import storage

    client = storage.storage_client()
    return [
        storage.download(client, artifacts[kind], directory) for kind in DOWNLOADED_KINDS if kind in artifacts
    ]


def upload_metadata(args: argparse.Namespace) -> dict[str, str]:
    metadata = {
        key: str(getattr(args, dest))
        for dest, key in METADATA_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    for item in args.metadata:
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ConfigError(f"--metadata wants KEY=VALUE[,KEY=VALUE], not {pair!r}")
            metadata[key] = value
    return metadata


def reattach(job_id: str, config: ClientConfig) -> str:
    words = ["rvc-trainer", "watch", job_id]
    if config.env_file:
        words += ["--env-file", str(config.env_file)]
    return shlex.join(words)


# --- arguments ----------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flag, else --env-file, else the environment)")
    group.add_argument("--env-file", help="`export NAME=value` lines, e.g. from `python -m consumer dev`")
    group.add_argument("--inbox", help="gs://BUCKET/PREFIX/ the datasets go to ($INBOX_URL)")
    group.add_argument("--results-topic", help="the results topic ($RESULTS_TOPIC)")
    group.add_argument("--service-url", help="the api service, for status and cancel ($SERVICE_URL)")
    group.add_argument("--state-url", help="gs://STATE-BUCKET with the job records ($STATE_URL)")
    group.add_argument("--project", help="Google Cloud project ($GOOGLE_CLOUD_PROJECT)")
    following = argparse.ArgumentParser(add_help=False)
    following.add_argument(
        "--download", metavar="DIR", help="once succeeded, fetch the .pth, index, preview and report"
    )
    following.add_argument(
        "--json", action="store_true", help="also print each event of the job as a JSON line"
    )
    following.add_argument("--poll", type=float, default=30.0, help="seconds between reads of the job record")

    top = argparse.ArgumentParser(prog="rvc-trainer", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", parents=[common, following], help="upload a dataset zip; print the job id")
    p.add_argument("dataset", help="the zip of one voice")
    p.add_argument("--model-name", required=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--sample-rate")
    p.add_argument("--version", choices=("v1", "v2"))
    p.add_argument("--f0-method")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--author")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE[,…]",
                   help="any other custom metadata, as gcloud's --custom-metadata")  # fmt: skip
    p.add_argument("--object-name", help="object name under the inbox (default: the file's name)")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end (exit 0 succeeded, 1 failed)"
    )
    p.set_defaults(run=submit)

    p = sub.add_parser("watch", parents=[common, following], help="follow a job to its end")
    p.add_argument("job")
    p.set_defaults(run=watch)

    p = sub.add_parser("status", parents=[common], help="a job's record")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="the record as JSON")
    p.set_defaults(run=status)

    p = sub.add_parser("list", parents=[common], help="jobs in the state bucket, oldest first")
    p.add_argument("--model", help="only this model name")
    p.add_argument("--json", action="store_true", help="one record per line as JSON")
    p.set_defaults(run=list_jobs)

    p = sub.add_parser("download", parents=[common], help="a succeeded job's model files")
    p.add_argument("job")
    p.add_argument("directory")
    p.set_defaults(run=download)

    p = sub.add_parser("cancel", parents=[common], help="stop a job (it ends `cancelled`: one final event)")
    p.add_argument("job")
    p.set_defaults(run=cancel)
    return top
