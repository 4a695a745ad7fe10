"""What counts as a training upload, and the model name an upload gets.

Shared by intake (the services) and `functions/dead_letter` (deployed with only `consumer/jobs`,
`consumer/errors.py`, `rvc_core/errors.py` and `rvc_core/names.py`), so this module imports nothing
but the standard library and `rvc_core.names` (the model-name rule, shared with the library). The
job id of an upload is `records.job_id_for(records.source_key(bucket, name, generation))`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

# The rule is rvc_core.names'; re-exported here, where the job protocol's users have long read it.
from rvc_core.names import MODEL_NAME as MODEL_NAME
from rvc_core.names import MODEL_NAME_ACCEPTED as MODEL_NAME_ACCEPTED
from rvc_core.names import is_model_name, sanitise_model_name

# Parallel composite uploads (`gcloud storage cp` of files > 150 MiB) write their parts here.
COMPOSITE_PARTS_PREFIX = "gcloud/tmp/"


def _is_own(url: str, own_buckets: Iterable[str]) -> bool:
    return any(url.startswith(f"{own.rstrip('/')}/") for own in own_buckets if own)


# Why an object does not start a job: checked in order, the first match wins.
# Each test gets (object URL, object name, inbox prefix, the service's own bucket URLs).
UPLOAD_FILTERS: tuple[tuple[str, Callable[[str, str, str, tuple[str, ...]], bool]], ...] = (
    ("the object is in one of the service's own buckets", lambda url, name, inbox, own: _is_own(url, own)),
    (
        "a temporary part of a parallel composite upload",
        lambda url, name, inbox, own: name.startswith(COMPOSITE_PARTS_PREFIX),
    ),
    ("outside the inbox prefix", lambda url, name, inbox, own: not name.startswith(inbox)),
    ("a folder placeholder", lambda url, name, inbox, own: name.endswith("/")),
    ("not a .zip", lambda url, name, inbox, own: not name.lower().endswith(".zip")),
)


def why_not_an_upload(
    bucket: str,
    name: str,
    *,
    inbox_prefix: str,
    own_buckets: Iterable[str] = (),
    object_url: str | None = None,
) -> str | None:
    """Why object `name` in `bucket` is not a training upload, or None when it is one.

    `own_buckets`: URLs (`gs://state`, `gs://inbox/state`, `file:///…/models`) the service writes
    under; their objects never start a job. `object_url`: the object's URL when it is not
    `gs://<bucket>/<name>` (the local stack's `file://` buckets)."""
    url = object_url or f"gs://{bucket}/{name}"
    own = tuple(own_buckets)
    for reason, applies in UPLOAD_FILTERS:
        if applies(url, name, inbox_prefix, own):
            return reason
    return None


# --- the model name of an upload (the rule itself is rvc_core.names) ----------------------------------
# Metadata keys (normalised: lower case, `-` → `_`) that name the model; RVC WebUI's and Applio's too.
MODEL_NAME_KEYS: tuple[str, ...] = ("model_name", "modelname")


def normalise_key(key: str) -> str:
    """`Model-Name`, ` model_name ` → `model_name`: metadata keys are case- and `-`/`_`-insensitive."""
    return key.strip().lower().replace("-", "_")


def default_model_name(object_name: str) -> str:
    """The name of an upload that gives none: the zip's stem, sanitised to `[A-Za-z0-9_-]{1,64}`."""
    stem = PurePosixPath(object_name).name
    return sanitise_model_name(stem[: -len(".zip")] if stem.lower().endswith(".zip") else stem)


def model_name_hint(metadata: Mapping[str, Any], object_name: str) -> str:
    """A name for the `failed` result of an upload whose metadata was refused or never read: the
    metadata's model name when it is a valid one, else the default."""
    for key, value in metadata.items():
        if normalise_key(str(key)) in MODEL_NAME_KEYS and is_model_name(str(value)):
            return str(value)
    return default_model_name(object_name)
