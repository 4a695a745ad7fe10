"""Weights from a bucket (`RVC_ASSETS=gs://…`, `RVC_PRETRAINED=gs://…`): fetched once per instance into
a local cache, checked against the manifest's SHA-256, safe under concurrent slices, and handed to
the trainer as a local folder. Small stand-in files and a manifest built for them; the gs:// cases
run against fake-gcs-server."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.adapters.storage import ObjectInfo, ObjectStore, open_store
from consumer.adapters.storage.gcs import GcsStore, default_client
from consumer.errors import TransientStorageError
from consumer.work.assets import RemoteAssets, is_remote, with_local_assets
from rvc_core.assets import (
    HUBERT_FAIRSEQ,
    HUBERT_HF_CONFIG,
    HUBERT_HF_WEIGHTS,
    RMVPE,
    Asset,
    AssetStore,
    pretrained_asset_names,
)
from rvc_core.errors import RvcError
from rvc_core.job_stages import pretrained_paths
from rvc_core.jobspec import JobEnvironment, JobSpec
from tests.emulators import FakeGcs, HttpFaultProxy, unique_name
from tests.test_storage import FAST_RETRY

G40, D40 = pretrained_asset_names("v2", 40000)
CONTENT: dict[str, bytes] = {
    HUBERT_FAIRSEQ: b"hubert weights " * 100,
    HUBERT_HF_CONFIG: b'{"model": "hubert"}',
    HUBERT_HF_WEIGHTS: b"hubert hf weights " * 50,
    RMVPE: b"rmvpe weights " * 80,
    G40: b"generator 40k " * 60,
    D40: b"discriminator 40k " * 60,
}


def small_manifest(content: dict[str, bytes] = CONTENT) -> tuple[Asset, ...]:
    return tuple(
        Asset(name, f"https://example.invalid/{name}", len(data), hashlib.sha256(data).hexdigest(), "test")
        for name, data in content.items()
    )


MANIFEST = small_manifest()
SPEC = JobSpec(model_name="alice")


class CountingStores:
    """`store_for` that counts downloads per URI and can slow them down (to overlap threads)."""

    def __init__(self, open_one: Callable[[str], ObjectStore], delay: float = 0.0) -> None:
        self._open, self._stores, self.delay = open_one, {}, delay
        self.downloads: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, uri: str) -> Any:
        outer = self

        class Counting:
            def __init__(self, inner: ObjectStore) -> None:
                self.inner = inner

            def download_file(self, uri: str, path: Path) -> ObjectInfo:
                with outer._lock:
                    outer.downloads.append(uri)
                time.sleep(outer.delay)
                return self.inner.download_file(uri, path)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        key = uri.split("://")[0]
        if key not in self._stores:
            self._stores[key] = self._open(uri)
        return Counting(self._stores[key])


def fill(store: ObjectStore, base: str, content: dict[str, bytes]) -> None:
    for name, data in content.items():
        store.write_bytes(f"{base}/{name}", data)


def cache_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def file_bucket(tmp_path: Path) -> str:
    base = f"file://{tmp_path}/bucket/rvc-assets"
    fill(open_store(base), base, {k: v for k, v in CONTENT.items() if not k.startswith("hubert_base/")})
    return base


# --- file:// (the same code path as gs://, without the emulator) -----------------------------------
def test_bucket_urls_become_a_local_folder_the_pipeline_can_use(tmp_path: Path, file_bucket: str) -> None:
    stores = CountingStores(open_store)
    assets = RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST)

    env = assets.localize(SPEC, JobEnvironment(assets=file_bucket, pretrained=file_bucket, device="cpu"))

    assert not is_remote(env.assets) and env.assets == env.pretrained
    folder = Path(env.assets)
    assert cache_files(folder) == {n: CONTENT[n] for n in (HUBERT_FAIRSEQ, RMVPE, G40, D40)}
    store = AssetStore.from_option(env.assets, {}, manifest=MANIFEST)  # what run_job builds
    for name in (HUBERT_FAIRSEQ, RMVPE):
        store.verify(name)
    assert pretrained_paths(SPEC, env.pretrained, {}) == (folder / G40, folder / D40)
    assert env.device == "cpu"


def test_files_are_fetched_once_per_instance(tmp_path: Path, file_bucket: str) -> None:
    stores = CountingStores(open_store)
    env = JobEnvironment(assets=file_bucket, pretrained=file_bucket)
    RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST).localize(SPEC, env)
    RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST).localize(SPEC, env)  # a new process
    assets = RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST)
    assets.localize(SPEC, env)
    assets.localize(SPEC, env)

    assert sorted(stores.downloads) == sorted(f"{file_bucket}/{n}" for n in (HUBERT_FAIRSEQ, RMVPE, G40, D40))


def test_only_the_files_the_job_needs_are_fetched(tmp_path: Path, file_bucket: str) -> None:
    stores = CountingStores(open_store)
    assets = RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST)

    env = assets.localize(JobSpec(model_name="a", f0_method="pm"), JobEnvironment(assets=file_bucket))

    assert stores.downloads == [f"{file_bucket}/{HUBERT_FAIRSEQ}"]
    assert env.pretrained is None  # not a bucket: left for rvc_core ($RVC_PRETRAINED or none)


def test_local_folders_and_none_are_left_alone(tmp_path: Path) -> None:
    assets = RemoteAssets(CountingStores(open_store), tmp_path / "cache", manifest=MANIFEST)
    env = JobEnvironment(assets="/opt/rvc-assets", pretrained="none")
    assert assets.localize(SPEC, env) is env


def test_checksum_mismatch_is_a_clear_permanent_error_and_the_file_is_not_kept(
    tmp_path: Path, file_bucket: str
) -> None:
    open_store(file_bucket).write_bytes(f"{file_bucket}/{RMVPE}", b"x" * len(CONTENT[RMVPE]))  # same size
    assets = RemoteAssets(CountingStores(open_store), tmp_path / "cache", manifest=MANIFEST)

    with pytest.raises(RvcError) as raised:
        assets.localize(SPEC, JobEnvironment(assets=file_bucket))

    assert raised.value.code == "asset_checksum_mismatch" and not raised.value.retryable
    assert RMVPE in raised.value.message and "SHA-256" in raised.value.message
    assert set(cache_files(assets.folder_for(file_bucket))) == {HUBERT_FAIRSEQ}  # fetched before it


def test_missing_file_in_the_bucket_is_asset_missing(tmp_path: Path, file_bucket: str) -> None:
    open_store(file_bucket).delete(f"{file_bucket}/{D40}")
    assets = RemoteAssets(CountingStores(open_store), tmp_path / "cache", manifest=MANIFEST)

    with pytest.raises(RvcError) as raised:
        assets.localize(SPEC, JobEnvironment(pretrained=file_bucket))

    assert raised.value.code == "asset_missing" and not raised.value.retryable
    assert D40 in raised.value.message


def test_hugging_face_encoder_is_used_when_the_fairseq_file_is_absent(tmp_path: Path) -> None:
    base = f"file://{tmp_path}/bucket"
    fill(open_store(base), base, {n: CONTENT[n] for n in (HUBERT_HF_CONFIG, HUBERT_HF_WEIGHTS, RMVPE)})
    assets = RemoteAssets(CountingStores(open_store), tmp_path / "cache", manifest=MANIFEST)

    folder = Path(assets.localize(SPEC, JobEnvironment(assets=base)).assets)

    assert sorted(cache_files(folder)) == sorted([HUBERT_HF_CONFIG, HUBERT_HF_WEIGHTS, RMVPE])


def test_corrupt_cached_file_is_fetched_again(tmp_path: Path, file_bucket: str) -> None:
    stores = CountingStores(open_store)
    env = JobEnvironment(assets=file_bucket)
    folder = Path(RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST).localize(SPEC, env).assets)
    (folder / RMVPE).write_bytes(b"damaged")

    RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST).localize(SPEC, env)

    assert (folder / RMVPE).read_bytes() == CONTENT[RMVPE]
    assert stores.downloads.count(f"{file_bucket}/{RMVPE}") == 2


def test_concurrent_slices_fetch_each_file_once_and_never_see_a_partial_file(
    tmp_path: Path, file_bucket: str
) -> None:
    stores = CountingStores(open_store, delay=0.05)
    env = JobEnvironment(assets=file_bucket, pretrained=file_bucket)
    seen: list[dict[str, bytes]] = []
    errors: list[BaseException] = []

    def slice_(assets: RemoteAssets) -> None:
        try:
            folder = Path(assets.localize(SPEC, env).assets)
            seen.append({n: (folder / n).read_bytes() for n in (HUBERT_FAIRSEQ, RMVPE, G40, D40)})
        except BaseException as exc:  # reported below
            errors.append(exc)

    shared = RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST)
    # Threads of one process share an instance; a second process has its own (the file lock serialises).
    instances = [shared, shared, shared, RemoteAssets(stores, tmp_path / "cache", manifest=MANIFEST)]
    threads = [threading.Thread(target=slice_, args=(a,)) for a in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert all(s == {n: CONTENT[n] for n in s} for s in seen) and len(seen) == 4
    assert len(stores.downloads) == 4  # one per file, whichever thread got there first
    assert not [p for p in (tmp_path / "cache").rglob("*.part")]


def test_wrapped_trainer_gets_local_folders(tmp_path: Path, file_bucket: str) -> None:
    received: list[JobEnvironment] = []

    def trainer(dataset_zip: Path, workdir: Path, outdir: Path, spec: Any, env: Any, **kw: Any) -> str:
        received.append(env)
        return "done"

    assets = RemoteAssets(CountingStores(open_store), tmp_path / "cache", manifest=MANIFEST)
    wrapped = with_local_assets(trainer, assets)  # type: ignore[arg-type]

    result = wrapped(
        tmp_path / "d.zip", tmp_path / "w", tmp_path / "o", SPEC, JobEnvironment(assets=file_bucket)
    )

    assert result == "done" and Path(received[0].assets).is_dir()


# --- gs:// against fake-gcs-server ----------------------------------------------------------------
def gcs_assets_bucket(endpoint: str, content: dict[str, bytes]) -> tuple[GcsStore, str]:
    client = default_client(endpoint, project="rvc-test")
    name = unique_name("assets")
    client.create_bucket(name, timeout=10)
    store = GcsStore(lambda: client, policy=FAST_RETRY)
    base = f"gs://{name}/rvc-assets"
    fill(store, base, content)
    return store, base


NEEDED = {n: CONTENT[n] for n in (HUBERT_FAIRSEQ, RMVPE, G40, D40)}


@pytest.mark.emulator
def test_worker_with_gs_assets_hands_the_trainer_a_verified_local_folder(
    fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    """The service as `deploy.sh --no-bake-assets` configures it: RVC_ASSETS and RVC_PRETRAINED are
    gs:// URLs; the trainer that slices call gets local folders (slices.py builds the environment
    from the settings exactly like this)."""
    from consumer.adapters.messaging.local_bus import LocalBus
    from consumer.services import build_services
    from consumer.settings import Settings

    store, base = gcs_assets_bucket(fake_gcs.url, NEEDED)
    settings = Settings.from_env(
        {
            "STATE_BUCKET": f"file://{tmp_path}/state",
            "MODELS_BUCKET": f"file://{tmp_path}/models",
            "MESSAGING": "local",
            "SERVICE_ROLE": "worker",
            "WORK_ROOT": str(tmp_path / "work"),
            "RVC_ASSETS": base,
            "RVC_PRETRAINED": base,
        }
    )
    opened: list[str] = []

    def open_one(uri: str) -> ObjectStore:
        opened.append(uri.split("://")[0])
        return store if uri.startswith("gs://") else open_store(uri)

    received: list[JobEnvironment] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        received.append(args[4])
        return "trained"

    services = build_services(
        settings,
        publisher=LocalBus(project="local"),
        open_store=open_one,
        trainer=recording,
        asset_manifest=MANIFEST,
    )
    assert services.slices is not None
    environment = JobEnvironment(assets=settings.rvc_assets, pretrained=settings.rvc_pretrained, device="cpu")
    workdir = tmp_path / "job" / "work"
    services.slices.deps.trainer(
        tmp_path / "job" / "dataset.zip", workdir, tmp_path / "job" / "out", SPEC, environment
    )

    folder = Path(received[0].assets)
    assert folder.is_relative_to(tmp_path / "work") and received[0].pretrained == str(folder)
    assert cache_files(folder) == NEEDED
    AssetStore.from_option(received[0].assets, {}, manifest=MANIFEST).verify(HUBERT_FAIRSEQ)
    assert pretrained_paths(SPEC, received[0].pretrained, {}) == (folder / G40, folder / D40)
    assert "gs" in opened


@pytest.mark.emulator
def test_gs_checksum_mismatch_fails_clearly_and_keeps_nothing(fake_gcs: FakeGcs, tmp_path: Path) -> None:
    store, base = gcs_assets_bucket(fake_gcs.url, {**NEEDED, RMVPE: b"tampered"})
    assets = RemoteAssets(lambda _uri: store, tmp_path / "cache", manifest=MANIFEST)

    with pytest.raises(RvcError) as raised:
        assets.localize(SPEC, JobEnvironment(assets=base))

    assert raised.value.code == "asset_checksum_mismatch" and not raised.value.retryable
    assert not (assets.folder_for(base) / RMVPE).exists()
    assert not list((tmp_path / "cache").rglob("*.part"))


@pytest.mark.emulator
def test_gs_transient_errors_are_retried_and_persistent_ones_are_retryable(
    fake_gcs: FakeGcs, gcs_fault_proxy: HttpFaultProxy, tmp_path: Path
) -> None:
    _, base = gcs_assets_bucket(fake_gcs.url, NEEDED)
    proxied = GcsStore(lambda: default_client(gcs_fault_proxy.url, project="rvc-test"), policy=FAST_RETRY)
    assets = RemoteAssets(lambda _uri: proxied, tmp_path / "cache", manifest=MANIFEST)

    gcs_fault_proxy.fail_next(2, method="GET")
    folder = Path(assets.localize(SPEC, JobEnvironment(assets=base, pretrained=base)).assets)
    assert gcs_fault_proxy.injected() == 2
    assert cache_files(folder) == NEEDED

    gcs_fault_proxy.fail_always()
    fresh = RemoteAssets(lambda _uri: proxied, tmp_path / "cache2", manifest=MANIFEST)
    with pytest.raises(TransientStorageError) as raised:
        fresh.localize(SPEC, JobEnvironment(assets=base))
    assert raised.value.retryable
    gcs_fault_proxy.heal()
