"""`python -m consumer serve | dev | demo`.

serve: the service under gunicorn (one worker, threads, `--timeout 0`: Cloud Run owns timeouts),
       on $PORT, configured from the environment; invalid configuration exits 2 with one line.
       `--role all|api|worker` (default $SERVICE_ROLE, else all) picks the endpoints it serves.
dev:   the whole stack on this machine (Pub/Sub emulator, fake-gcs-server, the service).
demo:  one job end to end with nothing from Google (file:// buckets, the local bus, CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

EXIT_CONFIG = 2
GUNICORN_JSON_LOGS = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "consumer.logs.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {"gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}


def serve(threads: int, role: str | None = None) -> int:
    import os

    from gunicorn.app.base import BaseApplication

    from consumer.errors import SettingsError
    from consumer.settings import Settings

    if role is not None:
        os.environ["SERVICE_ROLE"] = role  # the forked worker reads the same settings
    try:
        settings = Settings.from_env()  # validated here, once, before any worker starts
    except SettingsError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_CONFIG

    class Service(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": 1,  # one GPU, one process: slices never share it
                "worker_class": "gthread",
                "threads": threads,  # /events and /healthz stay answered while a slice runs
                "timeout": 0,
                "graceful_timeout": 9,  # Cloud Run sends SIGKILL 10 s after SIGTERM
                "accesslog": None,
                "logconfig_dict": GUNICORN_JSON_LOGS,  # gunicorn's own lines as JSON too
                "post_fork": _worker_dies_with_master,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):  # type: ignore[no-untyped-def]
            from consumer.app import create_app_from_env

            return create_app_from_env()

    Service().run()
    return 0


def _worker_dies_with_master(server: Any, worker: Any) -> None:
    """A worker whose master was killed outright would finish its slice as an orphan; end it too."""
    from consumer.local.orphans import die_with_parent_now

    die_with_parent_now(worker.ppid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the service (gunicorn, $PORT)")
    serve_cmd.add_argument("--threads", type=int, default=8, help="request threads of the one worker")
    serve_cmd.add_argument(
        "--role",
        choices=("all", "api", "worker"),
        default=None,
        help="endpoints: all, api (/events, /train, /jobs) or worker (/work); default $SERVICE_ROLE or all",
    )
    sub.add_parser("dev", help="run the local stack: emulators and the service", add_help=False)
    sub.add_parser("demo", help="train one small model end to end, locally", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return serve(args.threads, args.role)
    if args.command == "dev":
        from consumer.local.devstack import main as dev_main

        return int(dev_main(rest) or 0)
    from consumer.local.demo import main as demo_main

    return int(demo_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
