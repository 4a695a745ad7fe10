"""Weight files from a bucket: `RVC_ASSETS=gs://…` and `RVC_PRETRAINED=gs://…` become local folders.

rvc_core reads weights from local folders only and has no Google clients. When either setting names
a bucket (`gs://BUCKET/PREFIX`, or `file://` for tests and the local stack), `with_local_assets`
wraps the trainer so that, before each slice runs, the files that job needs (content encoder, pitch
model, the generator/discriminator pair of its version and rate) are in a local cache folder, and
the trainer gets that folder instead of the URL. Nothing in `consumer.work.slices` changes.

- Each file is fetched once per instance: later slices find it in the cache (checked against the
  manifest once per process) and fetch nothing.
- A fetch goes to a temporary file in the cache folder, is checked against the manifest's size and
  SHA-256, and only then renamed into place; a file that does not match is deleted and the slice
  fails with `asset_checksum_mismatch` (not retryable). An interrupted fetch leaves no file that
  looks complete.
- Two slices, threads or processes fetching the same file serialise on a lock (a thread lock and
  an `fcntl.flock` on a lock file under the cache's own `.locks/`); the second finds the file ready.
- Storage calls go through `consumer.adapters.storage` (timeouts, retries for transient errors);
  storage that stays unavailable is `storage_unavailable` (retryable: the slice is tried again), a
  file missing from the bucket is `asset_missing` (not retryable).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.errors import NotFound
from rvc_core.assets import (
    MANIFEST,
    Asset,
    AssetChecksumMismatch,
    AssetMissing,
    content_encoder_choices,
    mismatch,
    pitch_asset_names,
    pretrained_asset_names,
)

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.work.slices import Trainer

log = logging.getLogger(__name__)

REMOTE_SCHEMES: tuple[str, ...] = ("gs://", "file://")
STAGE = "fetch"


def is_remote(value: str | None) -> bool:
    """A bucket URL rather than a local folder or `none`."""
    return bool(value) and str(value).startswith(REMOTE_SCHEMES)


class RemoteAssets:
    """A local cache of weight files fetched from buckets, checked against `manifest`."""

    def __init__(
        self,
        store_for: Callable[[str], ObjectStore],
        cache_root: Path,
        *,
        manifest: Sequence[Asset] = MANIFEST,
    ) -> None:
        self.store_for = store_for
        self.cache_root = Path(cache_root)
        self.manifest = {asset.name: asset for asset in manifest}
        self._ready: set[Path] = set()  # checked in this process: not hashed again
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}

    # --- what a job needs ---------------------------------------------------------------------------
    def localize(self, spec: Any, env: Any) -> Any:
        """`env` (a `JobEnvironment`) with each bucket URL replaced by a local folder that holds the
        files `spec` (a `JobSpec`) needs; other values are returned unchanged."""
        changes: dict[str, str] = {}
        if is_remote(env.assets):
            changes["assets"] = str(self.fetch_content_assets(env.assets, spec.f0_method))
        if is_remote(env.pretrained):
            names = pretrained_asset_names(spec.version, spec.sample_rate)
            changes["pretrained"] = str(self.fetch(env.pretrained, names))
        return replace(env, **changes) if changes else env

    def fetch_content_assets(self, url: str, f0_method: str) -> Path:
        """The content encoder (the fairseq file, else the Hugging Face pair) and the pitch model."""
        choices = content_encoder_choices()
        for choice in choices:
            try:
                self.fetch(url, choice)
                break
            except AssetMissing:
                if choice is choices[-1]:
                    first = ", ".join(choices[0])
                    raise AssetMissing(
                        f"the content encoder is not under {url}: put {first} there (or "
                        f"{', '.join(choices[-1])}), as made by `python -m rvc_core assets download`",
                        stage=STAGE,
                    ) from None
        return self.fetch(url, pitch_asset_names(f0_method))

    def folder_for(self, url: str) -> Path:
        """The cache folder of one bucket URL (its files keep the manifest's relative names)."""
        key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
        return self.cache_root / key

    def fetch(self, url: str, names: Sequence[str]) -> Path:
        """Makes sure `names` (manifest names) from `url` are in the cache; returns the folder."""
        folder = self.folder_for(url)
        for name in names:
            self._ensure(url, folder, name)
        return folder

    # --- one file -----------------------------------------------------------------------------------
    def _ensure(self, url: str, folder: Path, name: str) -> None:
        asset = self.manifest.get(name)
        if asset is None:
            raise AssetMissing(f"{name} is not in the assets manifest", stage=STAGE)
        target = folder / name
        with self._thread_lock(target):
            if target in self._ready:
                return
            with self._file_lock(target):
                if target.is_file():
                    problem = mismatch(asset, target)
                    if problem is None:
                        self._ready.add(target)
                        return
                    log.warning("replacing cached %s, which has %s", target, problem)
                    target.unlink(missing_ok=True)
                self._download(f"{url.rstrip('/')}/{name}", asset, target)
                self._ready.add(target)

    def _download(self, uri: str, asset: Asset, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        log.info("fetching %s into %s", uri, target)
        try:
            try:
                self.store_for(uri).download_file(uri, part)
            except NotFound:
                raise AssetMissing(
                    f"{asset.name} is needed but {uri} does not exist; copy the folder made by "
                    "`python -m rvc_core assets download --dest DIR` to that bucket",
                    stage=STAGE,
                ) from None
            problem = mismatch(asset, part)
            if problem is not None:
                raise AssetChecksumMismatch(
                    f"{uri} has {problem} (the manifest's value); the file was not kept. Replace it "
                    "with the one `python -m rvc_core assets download` fetches",
                    stage=STAGE,
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)

    def _thread_lock(self, target: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(target, threading.Lock())

    @contextlib.contextmanager
    def _file_lock(self, target: Path) -> Iterator[None]:
        """Excludes other processes sharing the cache (gunicorn workers, a second server)."""
        locks = self.cache_root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(str(target).encode()).hexdigest()[:40]
        fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def with_local_assets(trainer: Trainer, assets: RemoteAssets) -> Trainer:
    """`trainer` (`run_job`'s signature) that first turns bucket URLs in its environment into local
    folders holding the job's weight files."""

    def run(dataset_zip: Path, workdir: Path, outdir: Path, spec: Any, env: Any, **kwargs: Any) -> Any:
        return trainer(dataset_zip, workdir, outdir, spec, assets.localize(spec, env), **kwargs)

    run.__wrapped__ = trainer  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def needs_remote_assets(*values: str | None) -> bool:
    return any(is_remote(v) for v in values)
