"""Object storage behind one small protocol: `gs://` (Cloud Storage or fake-gcs-server) or `file://`.

Both backends give every object a `generation` (an int that changes on every write) and support
compare-and-swap writes: `if_generation_match=g` succeeds only while the object is still at
generation `g`, and `0` means "only if it does not exist yet". A lost race raises
`PreconditionFailed`; a missing object raises `NotFound`. Nothing here creates a client at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from rvc_core.errors import ConfigError


@dataclass(frozen=True)
class ObjectInfo:
    uri: str  # gs://bucket/name or file:///abs/path
    bucket: str  # gs: the bucket name; file: the store's root folder (or the object's folder)
    name: str  # the object's name inside its bucket, "/"-separated
    generation: int
    size: int  # bytes
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


class ObjectStore(Protocol):
    def stat(self, uri: str) -> ObjectInfo | None:
        """The object's current info, or None when it does not exist."""
        ...

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        """(data, generation) of one consistent version. Raises NotFound."""
        ...

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Writes the object and returns its new generation. Raises PreconditionFailed."""
        ...

    def download_file(self, uri: str, path: Path) -> ObjectInfo:
        """Copies the object to `path` (atomically) and returns the info of the version copied."""
        ...

    def upload_file(
        self,
        path: Path,
        uri: str,
        *,
        content_type: str | None = None,
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Uploads a local file and returns the object's new generation."""
        ...

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object whose URI starts with `prefix_uri` (a plain string prefix, as in GCS), sorted."""
        ...

    def delete(self, uri: str) -> None:
        """Removes the object; removing one that is already gone is not an error."""
        ...


def open_store(url: str, *, gcs_client_factory: Callable[[], object] | None = None) -> ObjectStore:
    """The store for a bucket URL: `gs://bucket[/…]` or `file:///folder`.

    A `gs` store serves every `gs://` URI; `gcs_client_factory` returns a
    `google.cloud.storage.Client` and is called once, on first use. A `file` store serves every
    `file://` URI and reports objects under `url`'s folder with that folder as their bucket.
    """
    scheme = urlsplit(url).scheme
    if scheme == "gs":
        from consumer.adapters.storage.gcs import GcsStore

        return GcsStore(client_factory=gcs_client_factory)
    if scheme == "file":
        from consumer.adapters.storage.local import LocalStore, path_from_uri

        return LocalStore(root=path_from_uri(url))
    raise ConfigError(f"a storage URL must start with gs:// or file://, got {url!r}")


def join_uri(base: str, *parts: str) -> str:
    """`join_uri("gs://b/jobs", "x", "job.json")` -> `gs://b/jobs/x/job.json`: one `/` between parts;
    a trailing `/` on the last part is kept, so prefixes for `list` stay folder-like."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out + "/" if parts and parts[-1].endswith("/") else out
