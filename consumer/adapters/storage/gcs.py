"""`gs://` objects through google-cloud-storage (Cloud Storage, or fake-gcs-server via STORAGE_EMULATOR_HOST).

The library's own retries are switched off (`retry=None`) so that retrying lives in one place,
`consumer.adapters.retry`, with a timeout on every call.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.adapters.retry import STORAGE_POLICY, RetryPolicy, call_with_retry, http_status, is_transient
from consumer.adapters.storage import ObjectInfo
from consumer.errors import NotFound, PreconditionFailed, StorageError, TransientStorageError
from rvc_core.atomic import atomic_path


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> ("bucket", "a/b"); the name may be empty for a bucket-wide prefix."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, name


def default_client(endpoint: str | None = None, *, project: str | None = None) -> Any:
    """A storage client: anonymous against an emulator (`endpoint`, else STORAGE_EMULATOR_HOST),
    default credentials against Cloud Storage."""
    from google.cloud import storage

    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or os.environ.get("GOOGLE_CLOUD_PROJECT") or "test-project",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    return storage.Client(project=project)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _file_md5_b64(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


class GcsStore:
    def __init__(
        self, client_factory: Callable[[], Any] | None = None, *, policy: RetryPolicy = STORAGE_POLICY
    ) -> None:
        self._client_factory = client_factory or default_client
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.policy = policy

    # --- plumbing ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _blob(self, uri: str, generation: int | None = None) -> Any:
        bucket, name = parse_gs_uri(uri)
        if not name:
            raise ValueError(f"gs:// URI without an object name: {uri!r}")
        return self.client.bucket(bucket).blob(name, generation=generation)

    def _call(self, fn: Callable[[float], Any], *, what: str, uri: str) -> Any:
        """Runs one storage operation with retries and maps the library's errors to ours."""
        from google.api_core import exceptions as gexc

        try:
            return call_with_retry(fn, self.policy, what=f"{what} {uri}")
        except gexc.NotFound as exc:
            raise NotFound(f"{uri} does not exist") from exc
        except gexc.PreconditionFailed as exc:
            raise PreconditionFailed(f"{uri} changed since it was read (generation mismatch)") from exc
        except Exception as exc:
            if is_transient(exc):
                raise TransientStorageError(f"{what} {uri} kept failing: {exc}") from exc
            status = http_status(exc)
            if status == 404:
                raise NotFound(f"{uri} does not exist") from exc
            if status == 412:
                raise PreconditionFailed(f"{uri} changed since it was read (generation mismatch)") from exc
            raise StorageError(f"{what} {uri} failed: {exc}") from exc

    @staticmethod
    def _info(blob: Any) -> ObjectInfo:
        return ObjectInfo(
            uri=f"gs://{blob.bucket.name}/{blob.name}",
            bucket=blob.bucket.name,
            name=blob.name,
            generation=int(blob.generation),
            size=int(blob.size or 0),
            metadata=dict(blob.metadata or {}),
            content_type=blob.content_type,
        )

    def _conditional_write(
        self, uri: str, upload: Callable[[Any, float], None], md5_b64: str, **kw: Any
    ) -> int:
        """Runs an upload; if a retried conditional write ends in 412, checks whether an earlier try
        already landed (its reply lost to a transient error) before calling it a lost race."""
        attempts = 0

        def once(timeout: float) -> int:
            nonlocal attempts
            attempts += 1
            blob = self._blob(uri)
            blob.metadata = kw.get("metadata")
            upload(blob, timeout)
            return int(blob.generation)

        try:
            return self._call(once, what="write", uri=uri)
        except PreconditionFailed:
            if attempts < 2 or kw.get("if_generation_match") is None:
                raise
            blob = self._fetch_blob(uri)
            if (
                blob is not None
                and blob.md5_hash == md5_b64
                and dict(blob.metadata or {}) == (kw.get("metadata") or {})
            ):
                return int(blob.generation)
            raise

    def _fetch_blob(self, uri: str) -> Any:
        """The object's resource (generation, size, metadata, md5), or None when it does not exist."""
        bucket, name = parse_gs_uri(uri)

        def once(timeout: float) -> Any:
            return self.client.bucket(bucket).get_blob(name, timeout=timeout, retry=None)

        try:
            return self._call(once, what="stat", uri=uri)
        except NotFound:  # a missing bucket reads as a missing object
            return None

    # --- the ObjectStore protocol ----------------------------------------------------------------
    def stat(self, uri: str) -> ObjectInfo | None:
        blob = self._fetch_blob(uri)
        return None if blob is None else self._info(blob)

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        def once(timeout: float) -> tuple[bytes, int]:
            blob = self._blob(uri)
            data = blob.download_as_bytes(timeout=timeout, retry=None)
            return data, int(blob.generation)  # the generation the response came from

        return self._call(once, what="read", uri=uri)

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        def upload(blob: Any, timeout: float) -> None:
            blob.upload_from_string(
                data,
                content_type=content_type or "application/octet-stream",
                if_generation_match=if_generation_match,
                timeout=timeout,
                retry=None,
            )

        return self._conditional_write(
            uri, upload, _md5_b64(data), if_generation_match=if_generation_match, metadata=metadata
        )

    def upload_file(
        self,
        path: Path,
        uri: str,
        *,
        content_type: str | None = None,
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        path = Path(path)

        def upload(blob: Any, timeout: float) -> None:
            blob.upload_from_filename(
                str(path),
                content_type=content_type,
                if_generation_match=if_generation_match,
                timeout=timeout,
                retry=None,
            )

        md5 = _file_md5_b64(path) if if_generation_match is not None else ""
        return self._conditional_write(
            uri, upload, md5, if_generation_match=if_generation_match, metadata=metadata
        )

    def download_file(self, uri: str, path: Path) -> ObjectInfo:
        path = Path(path)
        for _ in range(3):  # an overwrite between stat and download removes the pinned generation
            info = self.stat(uri)
            if info is None:
                raise NotFound(f"{uri} does not exist")
            try:
                self._download_generation(uri, info.generation, path)
                return info
            except NotFound:
                continue
        raise NotFound(f"{uri} kept changing while being downloaded")

    def _download_generation(self, uri: str, generation: int, path: Path) -> None:
        def once(timeout: float) -> None:
            with atomic_path(path) as tmp:
                # Pinned to the generation stat saw, so data and info always describe one version.
                self._blob(uri, generation=generation).download_to_filename(
                    str(tmp), timeout=timeout, retry=None
                )

        self._call(once, what="download", uri=uri)

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        bucket, prefix = parse_gs_uri(prefix_uri)

        def once(timeout: float) -> list[Any]:
            return list(self.client.list_blobs(bucket, prefix=prefix or None, timeout=timeout, retry=None))

        try:
            blobs = self._call(once, what="list", uri=prefix_uri)
        except NotFound:
            return []
        return sorted((self._info(b) for b in blobs), key=lambda info: info.name)

    def delete(self, uri: str) -> None:
        def once(timeout: float) -> None:
            self._blob(uri).delete(timeout=timeout, retry=None)

        with contextlib.suppress(NotFound):  # already gone, perhaps by a try whose reply was lost
            self._call(once, what="delete", uri=uri)
