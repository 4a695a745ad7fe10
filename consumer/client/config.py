"""Where the client finds the inbox, the results topic, the service and the state bucket.

Each setting comes from a flag, else from `--env-file` (the `export NAME=value` lines that
`python -m consumer dev` writes), else from the environment. The emulator variables of an env file
(PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT) are put into this process's
environment, where the Google client libraries read them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from consumer.local.devstack import parse_env_text

# Flag (argparse dest) → variable.
VARIABLES: dict[str, str] = {
    "inbox": "INBOX_URL",
    "results_topic": "RESULTS_TOPIC",
    "service_url": "SERVICE_URL",
    "state_url": "STATE_URL",
    "project": "GOOGLE_CLOUD_PROJECT",
}
EMULATOR_VARIABLES = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ConfigError(Exception):
    """A setting a command needs is missing or malformed (exit 2)."""


@dataclass(frozen=True)
class ClientConfig:
    inbox: str | None = None  # gs://bucket/prefix/ where datasets are uploaded
    results_topic: str | None = None  # a topic name or projects/P/topics/T
    service_url: str | None = None  # the api service (status, cancel)
    state_url: str | None = None  # gs://state-bucket: job records (list, and status without a service)
    project: str | None = None
    env_file: Path | None = None
    pubsub_emulator: str | None = None
    storage_emulator: str | None = None

    @property
    def on_emulators(self) -> bool:
        return bool(self.pubsub_emulator or self.storage_emulator)

    def service_is_local(self) -> bool:
        """No ID token for a service on this machine or behind the emulators (the dev stack)."""
        host = urlsplit(self.service_url or "").hostname or ""
        return self.on_emulators or host in LOOPBACK_HOSTS

    def need(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} or ${VARIABLES[name]} is needed (or --env-file)")
        return str(value)


def load_config(flags: Mapping[str, object], environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Flags over the env file over the environment. Puts an env file's emulator variables into
    `os.environ` (only when `environ` is the process's own)."""
    own = environ is None
    env = dict(os.environ if environ is None else environ)
    env_file = flags.get("env_file")
    if env_file:
        path = Path(str(env_file))
        try:
            from_file = parse_env_text(path.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read --env-file {path}: {err.strerror}") from None
        env.update(from_file)
        if own:
            for key in EMULATOR_VARIABLES:
                if key in from_file:
                    os.environ[key] = from_file[key]
    values = {name: (flags.get(name) or env.get(var) or None) for name, var in VARIABLES.items()}
    if not values["state_url"] and env.get("STATE_BUCKET"):
        values["state_url"] = env["STATE_BUCKET"]
    if values["project"] and own:
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", str(values["project"]))
    return ClientConfig(
        **{k: (str(v) if v else None) for k, v in values.items()},
        env_file=Path(str(env_file)) if env_file else None,
        pubsub_emulator=env.get("PUBSUB_EMULATOR_HOST") or None,
        storage_emulator=env.get("STORAGE_EMULATOR_HOST") or None,
    )
