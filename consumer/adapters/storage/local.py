"""`file://` objects with Cloud Storage's semantics: generations and compare-and-swap writes.

- The generation is the data file's `st_mtime_ns`. The store sets it explicitly on every write
  (strictly increasing per object), so two writes in the same clock tick still differ; a file
  dropped in by another program gets its own mtime as a generation.
- A write happens under an exclusive `fcntl.flock` on a per-object lock file: check the expected
  generation, write a temporary file beside the target, then `os.replace` it in one step. Readers
  take no lock: they open the file and `fstat` the open descriptor, so data and generation always
  come from one version. Safe across threads and processes on one machine (not over NFS).
  Lock files live in one folder per machine (`<tmp>/rvc-objstore-locks/`, named by a hash of the
  object's real path), never in the bucket, so users' output folders hold only their files.
- Content type and custom metadata live in a sidecar keyed by generation, written before the data
  is swapped in and keeping the previous entry, so a reader never sees one version's data with
  another's metadata. A version with no custom metadata and the usual content type for its name
  (`default_content_type`) needs no entry, and no sidecar is created for it.
Bookkeeping files are named `.objstore-<name>.*` beside each object and never listed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

from consumer.adapters.storage import ObjectInfo
from consumer.errors import NotFound, PreconditionFailed
from rvc_core.atomic import atomic_file, default_file_mode

RESERVED_PREFIX = ".objstore-"
LOCK_DIR_NAME = "rvc-objstore-locks"
# Content types the service writes that `mimetypes` guesses differently (or not at all), and the
# fallback Cloud Storage reports for an object without one.
_KNOWN_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".zip": "application/zip",
    ".json": "application/json",
}
_FALLBACK_TYPE = "application/octet-stream"


def default_content_type(name: str) -> str:
    """The content type an object gets when none was recorded: by its name's extension."""
    suffix = Path(name).suffix.lower()
    return _KNOWN_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or _FALLBACK_TYPE


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / LOCK_DIR_NAME


def path_from_uri(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file:// URI: {uri!r}")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise ValueError(f"file:// URI must hold an absolute path: {uri!r}")
    return path


def uri_from_path(path: Path) -> str:
    return "file://" + quote(str(path))


class LocalStore:
    def __init__(self, root: Path | None = None, *, lock_dir: Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        # Every process on the machine must use the same folder for the locks to exclude each other.
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()

    # --- paths and bookkeeping --------------------------------------------------------------------
    def _object_path(self, uri: str) -> Path:
        path = path_from_uri(uri)
        if any(part.startswith(RESERVED_PREFIX) for part in path.parts):
            raise ValueError(f"object names may not start with {RESERVED_PREFIX!r}: {uri!r}")
        if uri.endswith("/"):
            raise ValueError(f"an object URI cannot end with '/': {uri!r}")
        return path

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f"{RESERVED_PREFIX}{path.name}.meta.json")

    def _lock_file(self, path: Path) -> Path:
        """The object's lock file: outside the bucket, named by a hash of the object's real path."""
        real = os.path.join(os.path.realpath(path.parent), path.name)
        return self.lock_dir / f"{hashlib.sha256(real.encode()).hexdigest()[:40]}.lock"

    def _open_lock(self, path: Path) -> int:
        if not self.lock_dir.is_dir():
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # shared by every user of the machine, like /tmp
                os.chmod(self.lock_dir, 0o1777)
        lock = self._lock_file(path)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # made by another user: flock works on a read-only descriptor too
            fd = os.open(lock, os.O_RDONLY)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)
        return fd

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _bucket_and_name(self, path: Path) -> tuple[str, str]:
        if self.root is not None and path.is_relative_to(self.root) and path != self.root:
            return str(self.root), path.relative_to(self.root).as_posix()
        return str(path.parent), path.name

    def _entries(self, path: Path) -> list[dict[str, Any]]:
        try:
            return json.loads(self._sidecar(path).read_text())["entries"]
        except (FileNotFoundError, ValueError, KeyError):
            return []

    def _info(self, path: Path, st: os.stat_result) -> ObjectInfo:
        generation = st.st_mtime_ns
        entry = next((e for e in self._entries(path) if e.get("generation") == generation), None)
        bucket, name = self._bucket_and_name(path)
        if entry is None:  # no custom metadata, or written by another program: a guessed type
            metadata, content_type = {}, default_content_type(path.name)
        else:
            metadata, content_type = dict(entry.get("metadata") or {}), entry.get("content_type")
        return ObjectInfo(
            uri=uri_from_path(path),
            bucket=bucket,
            name=name,
            generation=generation,
            size=st.st_size,
            metadata=metadata,
            content_type=content_type,
        )

    @staticmethod
    def _current_generation(path: Path) -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None

    def _write(
        self,
        uri: str,
        fill: Callable[[BinaryIO], None],
        *,
        if_generation_match: int | None,
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> int:
        path = self._object_path(uri)
        with self._locked(path):
            current = self._current_generation(path)
            if if_generation_match is not None and (current or 0) != if_generation_match:
                raise PreconditionFailed(
                    f"{uri} is at generation {current or 0}, expected {if_generation_match}"
                )
            generation = max(time.time_ns(), (current or 0) + 1)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f"{RESERVED_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent
            )
            try:
                with os.fdopen(fd, "wb") as fh:
                    fill(fh)
                os.chmod(tmp_name, default_file_mode())  # mkstemp's 0600 would hide models from others
                os.utime(tmp_name, ns=(generation, generation))
                generation = os.stat(tmp_name).st_mtime_ns  # what the filesystem kept is what readers see
                if generation == current:
                    raise OSError(f"{path.parent} keeps too coarse timestamps for object generations")
                if metadata or (content_type and content_type != default_content_type(path.name)):
                    previous = [e for e in self._entries(path) if e.get("generation") == current]
                    entry = {
                        "generation": generation,
                        "content_type": content_type,
                        "metadata": dict(metadata or {}),
                    }
                    self._write_sidecar(path, [*previous, entry])
                # else: no entry is needed (its absence reads as no metadata and the default type);
                # an existing sidecar keeps the previous version's entry for its readers.
                os.replace(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
            return generation

    def _write_sidecar(self, path: Path, entries: list[dict[str, Any]]) -> None:
        sidecar = self._sidecar(path)
        fd, tmp_name = tempfile.mkstemp(prefix=sidecar.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"entries": entries}, fh)
        os.chmod(tmp_name, default_file_mode())  # readers of the object must be able to read its metadata
        os.replace(tmp_name, sidecar)

    # --- the ObjectStore protocol ----------------------------------------------------------------
    def stat(self, uri: str) -> ObjectInfo | None:
        path = self._object_path(uri)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return None if not path.is_file() else self._info(path, st)

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        path = self._object_path(uri)
        try:
            with open(path, "rb") as fh:
                generation = os.fstat(fh.fileno()).st_mtime_ns
                return fh.read(), generation
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"{uri} does not exist") from exc

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        return self._write(
            uri,
            lambda fh: fh.write(data),
            if_generation_match=if_generation_match,
            content_type=content_type,
            metadata=metadata,
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
        def fill(fh: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._write(
            uri,
            fill,
            if_generation_match=if_generation_match,
            content_type=content_type,  # None: the default for the object's name
            metadata=metadata,
        )

    def download_file(self, uri: str, path: Path) -> ObjectInfo:
        src_path = self._object_path(uri)
        path = Path(path)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 (closed by the `with` below; only open() may raise NotFound)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"{uri} does not exist") from exc
        with src:
            info = self._info(src_path, os.fstat(src.fileno()))
            with atomic_file(path) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return info

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        prefix = str(path_from_uri(prefix_uri)) + ("/" if prefix_uri.endswith("/") else "")
        top = Path(prefix) if prefix.endswith("/") else Path(prefix).parent
        found: list[ObjectInfo] = []
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith(RESERVED_PREFIX))
            for name in files:
                path = Path(folder) / name
                if name.startswith(RESERVED_PREFIX) or not str(path).startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while we walked
                    found.append(self._info(path, os.stat(path)))
        return sorted(found, key=lambda info: info.uri)

    def delete(self, uri: str) -> None:
        path = self._object_path(uri)
        with self._locked(path):
            for victim in (path, self._sidecar(path)):
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()
