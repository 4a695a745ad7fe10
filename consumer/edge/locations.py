"""Where `POST /train` may read and write: its trust boundary, checked before a job exists.

- `dataset_url`: with `gs://` buckets, an object in the inbox bucket (`INBOX_BUCKET`) or in one of
  `TRAIN_DATASET_BUCKETS`, never in the state bucket. With `file://` buckets (the local stack), a file
  under the service's root (the folder holding its buckets), never in the state folder.
- `output_url`: with `gs://` buckets, the models bucket or one of `TRAIN_OUTPUT_BUCKETS`; with `file://`
  buckets, anywhere under the root. Never in the state bucket, never under the inbox prefix of the
  inbox bucket (a `.zip` there would start another job). Inside the models bucket only under this
  model's own folder `<models>/<model_name>/`, and never `latest.json` or a job's folder
  (`<models>/<model_name>/<job_id>/`, 16 hex digits): those belong to the jobs that write them.
- `file://` paths are resolved (`..`, symlinks): a path whose real location leaves the root is refused,
  and so is any `.` or `..` segment as written. `gs://` URLs must name an object, not only a bucket.

Each check returns None or a message for the 400 answer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.settings import Settings

JOB_FOLDER = re.compile(r"^[0-9a-f]{16}$")
LATEST = "latest.json"
BUCKET_CHECK_TIMEOUT_SECONDS = 10.0


def is_local(settings: Settings) -> bool:
    return settings.state_url.startswith("file://")


def local_root(settings: Settings) -> Path:
    """The folder that holds the local stack's buckets (the state folder's parent), resolved."""
    return Path(os.path.realpath(_path(settings.state_url).parent))


def check_dataset_url(url: Any, settings: Settings) -> str | None:
    problem = _shape("dataset_url", url, settings)
    if problem:
        return problem
    if is_local(settings):
        path = _resolved(url)
        if not path.is_relative_to(local_root(settings)):
            root = local_root(settings)
            return f"dataset_url must be a file under {root} (the service's buckets), got {url!r}"
        if path.is_relative_to(_resolved(settings.state_url)):
            return "dataset_url must not be in the state bucket"
        return None
    if _under(url, settings.state_url):
        return "dataset_url must not be in the state bucket"
    allowed = dataset_buckets(settings)
    if not allowed:
        return "/train reads datasets only from INBOX_BUCKET or TRAIN_DATASET_BUCKETS, and neither is set"
    bucket = _gs_bucket(url)
    if bucket not in allowed:
        return f"dataset_url must be in bucket {_one_of(allowed)}, got gs://{bucket}"
    return None


def check_output_url(url: Any, settings: Settings, model_name: str) -> str | None:
    problem = _shape("output_url", url, settings)
    if problem:
        return problem
    local = is_local(settings)
    if local:
        path = _resolved(url)
        if not path.is_relative_to(local_root(settings)):
            return f"output_url must be under {local_root(settings)} (the service's buckets), got {url!r}"
        state = path.is_relative_to(_resolved(settings.state_url))
        models = _resolved(settings.models_url)
        in_models = path.is_relative_to(models)
        relative = path.relative_to(models).parts if in_models else ()
    else:
        state = _under(url, settings.state_url)
        in_models = _under(url, settings.models_url)
        relative = tuple(p for p in url[len(settings.models_url) :].split("/") if p) if in_models else ()
    if state:
        return "output_url must not be in the state bucket"
    if _in_inbox(url, settings):
        return "output_url must not be under the inbox prefix of the inbox bucket: it would start another job"
    if in_models:
        own = f"{settings.models_url}/{model_name}/"
        if len(relative) < 2 or relative[0] != model_name:
            return f"output_url inside the models bucket must be under this model's own folder {own}"
        if relative[1] == LATEST or JOB_FOLDER.match(relative[1]):
            return f"output_url must not be {own}{relative[1]}: it belongs to the jobs that write it"
        return None
    if local:
        return None
    bucket = _gs_bucket(url)
    allowed = output_buckets(settings)
    if bucket not in allowed:
        return f"output_url must be in bucket {_one_of(allowed)}, got gs://{bucket}"
    return None


def output_bucket_problem(store: ObjectStore, url: str, settings: Settings) -> str | None:
    """Whether the service can reach `url`'s bucket, asked now rather than after training. Only for a
    `gs://` bucket other than the models bucket (a missing folder of the local stack is created)."""
    if is_local(settings) or _under(url, settings.models_url):
        return None
    client = getattr(store, "client", None)
    if client is None:
        return None
    from google.api_core import exceptions as gexc

    bucket = _gs_bucket(url)
    try:
        next(iter(client.list_blobs(bucket, max_results=1, timeout=BUCKET_CHECK_TIMEOUT_SECONDS)), None)
    except gexc.NotFound:
        return f"output_url's bucket gs://{bucket} does not exist"
    except gexc.Forbidden:
        return f"output_url's bucket gs://{bucket} is not open to this service's account"
    except gexc.GoogleAPIError as err:
        return f"output_url's bucket gs://{bucket} could not be reached: {err}"
    return None


def dataset_buckets(settings: Settings) -> tuple[str, ...]:
    inbox = settings.inbox_bucket_name
    return tuple(dict.fromkeys(([inbox] if inbox else []) + list(settings.train_dataset_buckets)))


def output_buckets(settings: Settings) -> tuple[str, ...]:
    models = _gs_bucket(settings.models_url + "/")
    return tuple(dict.fromkeys([models, *settings.train_output_buckets]))


# --- helpers ----------------------------------------------------------------------------------------
def _shape(field: str, url: Any, settings: Settings) -> str | None:
    if not isinstance(url, str) or not url:
        return f"{field} must be a URL string, got {url!r}"
    scheme = "file" if is_local(settings) else "gs"
    prefix = "file:///" if scheme == "file" else "gs://"
    if not url.startswith(prefix):
        return f"{field} must be a {prefix} URL (this service's buckets are {scheme}://), got {url!r}"
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc or parts.query or parts.fragment:
            return f"{field} must be file:///PATH, got {url!r}"
        path = unquote(parts.path)
    else:
        bucket, _, path = url.removeprefix("gs://").partition("/")
        if not bucket:
            return f"{field} must name a bucket: gs://BUCKET/OBJECT, got {url!r}"
        if not path.strip("/"):
            return f"{field} must name an object (gs://BUCKET/OBJECT), not only a bucket, got {url!r}"
    if any(seg in (".", "..") for seg in path.split("/")):
        return f"{field} must not contain '.' or '..' segments, got {url!r}"
    if "\x00" in path:
        return f"{field} must not contain NUL characters"
    return None


def _path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _resolved(url: str) -> Path:
    return Path(os.path.realpath(_path(url)))


def _gs_bucket(url: str) -> str:
    return url.removeprefix("gs://").split("/", 1)[0]


def _under(url: str, base: str) -> bool:
    base = base.rstrip("/")
    return url == base or url.startswith(f"{base}/")


def _in_inbox(url: str, settings: Settings) -> bool:
    inbox = settings.inbox_bucket_name
    if not inbox:
        return False
    if is_local(settings):
        folder = local_root(settings) / inbox
        path = _resolved(url)
        if not path.is_relative_to(folder):
            return False
        name = PurePosixPath(*path.relative_to(folder).parts).as_posix()
    else:
        if _gs_bucket(url) != inbox:
            return False
        name = url.removeprefix(f"gs://{inbox}/")
    return (name.rstrip("/") + "/").startswith(settings.inbox_prefix)


def _one_of(buckets: tuple[str, ...]) -> str:
    names = [f"gs://{b}" for b in buckets]
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)
