"""The service's configuration: environment variables with defaults, validated once at start.

Each field's metadata names its variable and documents it, so the README table, the validation and
the error line come from one place. An invalid value fails start-up with one line naming the
variable and what it accepts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from consumer.errors import SettingsError
from consumer.work.scratch import memory_limit_bytes
from rvc_core.jobspec import COMPILE_CHOICES
from rvc_core.scratch_need import max_audio_minutes

PRESETS: tuple[str, ...] = ("full", "tiny")
MESSAGING_KINDS: tuple[str, ...] = ("pubsub", "local")
ROLES: tuple[str, ...] = ("all", "api", "worker")
MAX_DISPATCH_DEADLINE_SECONDS = 1800  # Cloud Tasks' ceiling for an HTTP task
# Part of each dispatch deadline kept out of the slice budget: instance start-up (image, CUDA,
# assets), the restore before training and the checkpoint upload after it. A quarter, at most 300 s.
SLICE_RESERVE_SHARE = 0.25
SLICE_RESERVE_MAX_SECONDS = 300.0
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def env_field(name: str, help: str, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"env": name, "help": help})


@dataclass(frozen=True)
class Settings:
    state_bucket: str = env_field(
        "STATE_BUCKET", "where job records, stage outputs and checkpoints live: gs://NAME or file:///DIR"
    )
    models_bucket: str = env_field(
        "MODELS_BUCKET", "where finished models are written: gs://NAME or file:///DIR"
    )
    project: str = env_field("GOOGLE_CLOUD_PROJECT", "Google Cloud project of the topics", "local")
    inbox_prefix: str = env_field("INBOX_PREFIX", "only uploads under this prefix start jobs", "datasets/")
    role: str = env_field(
        "SERVICE_ROLE", "all (intake, status and slices), api (intake and status) or worker (slices)", "all"
    )
    results_topic: str = env_field("RESULTS_TOPIC", "topic receiving the result CloudEvents", "rvc-results")
    task_queue: str = env_field(
        "TASK_QUEUE",
        "work queue: projects/P/locations/L/queues/Q (Cloud Tasks) or file:///DIR (local); "
        "default with file:// state: a `tasks` folder beside the state bucket",
        "",
    )
    work_url: str = env_field("WORK_URL", "where work tasks are sent: the worker's https://…/work URL", "")
    tasks_service_account: str = env_field(
        "TASKS_SERVICE_ACCOUNT", "service account whose OIDC token work tasks carry (Cloud Tasks)", ""
    )
    tasks_audience: str = env_field(
        "TASKS_AUDIENCE", "audience of the tasks' OIDC token; default: WORK_URL's origin", ""
    )
    dispatch_deadline_seconds: float = env_field(
        "DISPATCH_DEADLINE_SECONDS",
        "how long the queue waits for a slice's answer, s (Cloud Tasks allows 15 to 1800)",
        float(MAX_DISPATCH_DEADLINE_SECONDS),
    )
    slice_seconds: float = env_field(
        "SLICE_SECONDS",
        "work time per slice, s; default: DISPATCH_DEADLINE_SECONDS less a reserve for start-up and "
        "upload (a quarter, at most 300 s); a larger value is refused",
        0.0,
    )
    worker_slots: int = env_field(
        "WORKER_SLOTS", "slices that run at once: the queue's max concurrent dispatches (GPU instances)", 1
    )
    lease_seconds: float = env_field(
        "LEASE_SECONDS", "a job lease not renewed for this long, s, is taken over (a crashed slice)", 60.0
    )
    max_consecutive_failures: int = env_field(
        "MAX_CONSECUTIVE_FAILURES", "failed slices in a row after which a job is marked failed", 3
    )
    progress_every_epochs: int = env_field(
        "PROGRESS_EVERY_EPOCHS", "publish a progress event every N epochs (and at each stage)", 10
    )
    train_preset: str = env_field("TRAIN_PRESET", "network size: full (RVC's) or tiny (tests, demos)", "full")
    train_compile: str = env_field(
        "TRAIN_COMPILE",
        "torch.compile the networks: auto (where it wins, docs/performance.md), on or off",
        "auto",
    )
    rvc_assets: str | None = env_field(
        "RVC_ASSETS", "folder of weight files (hubert, rmvpe), or 'none' for random networks", None
    )
    rvc_pretrained: str | None = env_field(
        "RVC_PRETRAINED", "folder of pretrained generator/discriminator weights, or 'none'", None
    )
    messaging: str = env_field("MESSAGING", "pubsub (PUBSUB_EMULATOR_HOST honoured) or local", "pubsub")
    device: str = env_field("DEVICE", "auto, cpu or cuda", "auto")
    work_root: str = env_field(
        "WORK_ROOT", "local scratch folder for work dirs", os.path.join(tempfile.gettempdir(), "rvc-trainer")
    )
    # --- trust boundary (issue 9)
    inbox_bucket: str = env_field(
        "INBOX_BUCKET",
        "the only bucket whose uploads start jobs (/events), and where /train may read datasets; "
        "default with file:// state: the sibling folder `inbox`; unset with gs:// state: any bucket "
        "but the service's own (Terraform sets it)",
        "",
    )
    train_dataset_buckets: tuple[str, ...] = env_field(
        "TRAIN_DATASET_BUCKETS", "more gs:// buckets /train may read dataset_url from (comma-separated)", ()
    )
    train_output_buckets: tuple[str, ...] = env_field(
        "TRAIN_OUTPUT_BUCKETS",
        "more gs:// buckets /train may write output_url to (comma-separated); the models bucket always",
        (),
    )
    max_dataset_bytes: int = env_field(
        "MAX_DATASET_BYTES",
        "largest dataset zip accepted, bytes; default: an eighth of the instance memory (scratch lives "
        "in RAM on Cloud Run), 2 GiB on 16 GiB",
        0,
    )
    max_audio_minutes: float = env_field(
        "MAX_AUDIO_MINUTES",
        "longest dataset prepared, minutes of decoded audio (a longer one fails as too_much_audio before "
        "any work); default: what the instance memory holds as scratch beside the process, about 115 "
        "on 16 GiB with the full preset (docs/workdir.md)",
        0.0,
    )
    push_service_account: str = env_field(
        "PUSH_SERVICE_ACCOUNT",
        "service account whose OIDC token /events pushes carry (Pub/Sub, Eventarc)",
        "",
    )
    push_audience: str = env_field(
        "PUSH_AUDIENCE", "audience /events tokens must carry, when set (Cloud Run checks it already)", ""
    )
    require_push_identity: bool = env_field(
        "REQUIRE_PUSH_IDENTITY",
        "true: /events and /work verify the OIDC token (signature, issuer, expiry) and its email "
        "against PUSH_SERVICE_ACCOUNT / TASKS_SERVICE_ACCOUNT; 401/403 otherwise",
        False,
    )
    # --- slices and scratch (issue 9)
    scratch_budget_bytes: int = env_field(
        "SCRATCH_BUDGET_BYTES",
        "bytes of WORK_ROOT kept for jobs this instance is not running (least recently used evicted "
        "first); 0: 40 % of the memory limit (cgroup memory.max, else RAM), as Cloud Run's disk is memory",
        0,
    )
    # --- end of slices and scratch (issue 9)
    port: int = env_field("PORT", "HTTP port", 8080)
    host: str = env_field("HOST", "interface to listen on (Cloud Run needs all: 0.0.0.0)", "0.0.0.0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates every variable; raises `SettingsError` with one line listing all problems."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name, "").strip()
            if not raw:
                if f.default is MISSING:
                    problems.append(f"{name} is required ({f.metadata['help']})")
                continue
            try:
                values[f.name] = PARSERS.get(f.name, str)(raw)
            except ValueError as err:
                problems.append(f"{name}={raw!r}: {err}")
        if values.get("messaging", "pubsub") == "pubsub" and "project" not in values:
            problems.append("GOOGLE_CLOUD_PROJECT is required with MESSAGING=pubsub (the topics' project)")
        if problems:
            raise SettingsError("; ".join(problems))
        return cls(**values)

    def __post_init__(self) -> None:
        if self.state_url == self.models_url:
            raise SettingsError("STATE_BUCKET and MODELS_BUCKET must differ")
        limit = self.dispatch_deadline_seconds - slice_reserve(self.dispatch_deadline_seconds)
        if self.slice_seconds == 0:
            object.__setattr__(self, "slice_seconds", limit)  # derived: one knob, never two that disagree
        elif self.slice_seconds > limit:
            raise SettingsError(
                f"SLICE_SECONDS={self.slice_seconds:g} leaves no reserve under DISPATCH_DEADLINE_SECONDS="
                f"{self.dispatch_deadline_seconds:g}: at most {limit:g} (or leave it unset)"
            )
        if self.task_queue_url.startswith("projects/") and not self.work_url:
            raise SettingsError("WORK_URL is required with a Cloud Tasks TASK_QUEUE (the worker's /work URL)")
        if not self.task_queue_url:
            raise SettingsError("TASK_QUEUE is required with gs:// buckets (projects/P/locations/L/queues/Q)")
        # --- trust boundary (issue 9)
        if self.max_dataset_bytes == 0:
            object.__setattr__(self, "max_dataset_bytes", default_max_dataset_bytes())
        if self.max_audio_minutes == 0:
            object.__setattr__(self, "max_audio_minutes", default_max_audio_minutes(self.train_preset))
        if self.require_push_identity:
            missing = [
                name
                for name, roles, value in (
                    ("PUSH_SERVICE_ACCOUNT", ("all", "api"), self.push_service_account),
                    ("TASKS_SERVICE_ACCOUNT", ("all", "worker"), self.tasks_service_account),
                )
                if self.role in roles and not value
            ]
            if missing:
                raise SettingsError(
                    f"REQUIRE_PUSH_IDENTITY=true needs {' and '.join(missing)} (the expected token email)"
                )

    @property
    def task_queue_url(self) -> str:
        if self.task_queue:
            return self.task_queue.rstrip("/")
        if self.state_url.startswith("file://"):
            return f"{self.state_url.rsplit('/', 1)[0]}/tasks"
        return ""

    @property
    def state_url(self) -> str:
        return bucket_url(self.state_bucket)

    @property
    def models_url(self) -> str:
        return bucket_url(self.models_bucket)

    # --- trust boundary (issue 9)
    @property
    def inbox_bucket_name(self) -> str:
        """The bucket whose uploads start jobs; "" (any bucket) only with gs:// state and no INBOX_BUCKET."""
        if self.inbox_bucket:
            return bucket_name(self.inbox_bucket)
        return LOCAL_INBOX_BUCKET if self.state_url.startswith("file://") else ""

    def object_url(self, bucket: str, name: str) -> str:
        """The URL of an object named in an event. With `file://` state, buckets are sibling folders:
        STATE_BUCKET=file:///srv/buckets/state puts bucket `inbox` at file:///srv/buckets/inbox."""
        if self.state_url.startswith("file://"):
            return f"{self.state_url.rsplit('/', 1)[0]}/{bucket}/{name}"
        return f"gs://{bucket}/{name}"

    def is_own_object(self, url: str) -> bool:
        """True for objects the service writes (state, models): they must never start a job."""
        return any(url.startswith(f"{own}/") for own in (self.state_url, self.models_url))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def documentation() -> list[tuple[str, str, str]]:
    """(variable, default, help) rows for the README."""
    rows = []
    for f in fields(Settings):
        default = "(required)" if f.default is MISSING else str(f.default)
        rows.append((f.metadata["env"], default, f.metadata["help"]))
    return rows


# --- trust boundary (issue 9)
LOCAL_INBOX_BUCKET = "inbox"  # with file:// state, the inbox is the sibling folder of this name
# Scratch (the dataset, its decoded and resampled audio, features, checkpoints) lives in the instance's
# memory on Cloud Run, beside the process itself; the decoded audio alone is a few times the zip.
DATASET_SHARE_OF_MEMORY = 8  # 16 GiB instance → 2 GiB datasets


def default_max_dataset_bytes() -> int:
    return memory_limit_bytes() // DATASET_SHARE_OF_MEMORY


def default_max_audio_minutes(preset: str) -> float:
    return max_audio_minutes(memory_limit_bytes(), preset)


def _bucket_list(raw: str) -> tuple[str, ...]:
    names = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item and not item.startswith("gs://"):
            raise ValueError("must be gs:// bucket names, comma-separated")
        name = bucket_name(item)
        if not name or "/" in bucket_url(item).removeprefix("gs://").strip("/"):
            raise ValueError("must be whole buckets (gs://NAME or NAME), comma-separated")
        names.append(name)
    return tuple(names)


def _flag(raw: str) -> bool:
    value = raw.lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _inbox_bucket(raw: str) -> str:
    url = bucket_url(raw)
    if not url.startswith("gs://") or "/" in url.removeprefix("gs://"):
        raise ValueError("must be a bucket name (or gs://NAME)")
    return bucket_name(url)


def bucket_url(raw: str) -> str:
    """`gs://b`, `gs://b/prefix`, `file:///dir` or a bare bucket name → a URL without a trailing slash."""
    raw = raw.strip()
    if "://" not in raw:
        raw = f"gs://{raw}"
    return raw.rstrip("/")


def bucket_name(raw: str) -> str:
    """The bucket of a URL: `gs://b/x` → `b`; for `file:///root/b` the last folder, `b`."""
    url = bucket_url(raw)
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return rest.rstrip("/").rsplit("/", 1)[-1]
    return rest.split("/", 1)[0]


def _bucket(raw: str) -> str:
    url = bucket_url(raw)
    scheme, _, rest = url.partition("://")
    if scheme not in ("gs", "file") or not rest.strip("/"):
        raise ValueError("must be gs://BUCKET, file:///FOLDER or a bucket name")
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError("a file:// bucket needs an absolute path (file:///…)")
    return url


def _number(low: float, high: float) -> Callable[[str], float]:
    return _bounded(float, f"a number from {low:g} to {high:g}", low, high)


def _integer(low: int, high: int) -> Callable[[str], int]:
    return _bounded(int, f"an integer from {low} to {high}", low, high)


def _bounded(convert: Callable[[str], Any], described: str, low: float, high: float) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            raise ValueError(f"must be {described}") from None
        if not low <= value <= high:
            raise ValueError(f"must be {described}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def slice_reserve(dispatch_deadline_seconds: float) -> float:
    return min(SLICE_RESERVE_MAX_SECONDS, dispatch_deadline_seconds * SLICE_RESERVE_SHARE)


def _task_queue(raw: str) -> str:
    parts = raw.strip("/").split("/")
    if raw.startswith("file:///") or (len(parts) == 6 and parts[::2] == ["projects", "locations", "queues"]):
        return raw
    raise ValueError("must be projects/PROJECT/locations/REGION/queues/QUEUE or file:///DIR")


def _http_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise ValueError("must be an http(s):// URL")
    return raw


def _prefix(raw: str) -> str:
    # An empty prefix would take every object of the bucket; "/" alone means the same.
    value = raw.lstrip("/")
    if value and not value.endswith("/"):
        value += "/"
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "state_bucket": _bucket,
    "models_bucket": _bucket,
    "inbox_prefix": _prefix,
    "role": _choice(ROLES),
    "task_queue": _task_queue,
    "work_url": _http_url,
    "dispatch_deadline_seconds": _number(15, MAX_DISPATCH_DEADLINE_SECONDS),
    "slice_seconds": _number(0.1, MAX_DISPATCH_DEADLINE_SECONDS),
    "worker_slots": _integer(1, 1000),
    "lease_seconds": _number(3, 3600),
    "max_consecutive_failures": _integer(1, 100),
    "progress_every_epochs": _integer(1, 10_000),
    "train_preset": _choice(PRESETS),
    "train_compile": _choice(tuple(COMPILE_CHOICES)),
    "messaging": _choice(MESSAGING_KINDS),
    "device": _choice(DEVICES),
    "port": _integer(1, 65535),
    "scratch_budget_bytes": _integer(0, 2**50),  # slices and scratch (issue 9)
    # --- trust boundary (issue 9)
    "inbox_bucket": _inbox_bucket,
    "train_dataset_buckets": _bucket_list,
    "train_output_buckets": _bucket_list,
    "max_dataset_bytes": _integer(1024, 1 << 50),
    "max_audio_minutes": _number(0, 1_000_000),
    "require_push_identity": _flag,
}
