"""The object stores: the same semantics on file:// and on gs:// (fake-gcs-server), plus retries."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumer.adapters.retry import RetryPolicy, is_transient
from consumer.adapters.storage import ObjectStore, join_uri, open_store
from consumer.adapters.storage.gcs import GcsStore, default_client
from consumer.adapters.storage.local import LocalStore, path_from_uri
from consumer.errors import NotFound, PreconditionFailed, StorageError, TransientStorageError
from rvc_core.errors import ConfigError
from tests.emulators import FakeGcs, HttpFaultProxy, unique_name

FAST_RETRY = RetryPolicy(attempts=4, first_wait=0.05, max_wait=0.2, deadline=10.0, call_timeout=5.0)


@dataclass
class Bucket:
    store: ObjectStore
    base: str  # bucket URL, no trailing slash

    def uri(self, name: str) -> str:
        return join_uri(self.base, name)


def gcs_bucket(endpoint: str, project: str = "rvc-test", policy: RetryPolicy = FAST_RETRY) -> Bucket:
    client = default_client(endpoint, project=project)
    name = unique_name("bkt")
    client.create_bucket(name, timeout=10)
    return Bucket(GcsStore(lambda: client, policy=policy), f"gs://{name}")


@pytest.fixture(params=["file", pytest.param("gs", marks=pytest.mark.emulator)])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Bucket:
    if request.param == "file":
        root = tmp_path / "bucket"
        return Bucket(open_store(f"file://{root}"), f"file://{root}")
    fake_gcs: FakeGcs = request.getfixturevalue("fake_gcs")
    return gcs_bucket(fake_gcs.url)


@pytest.fixture
def proxied(fake_gcs: FakeGcs, gcs_fault_proxy: HttpFaultProxy) -> Iterator[tuple[Bucket, HttpFaultProxy]]:
    """A gs:// bucket reached through the fault-injecting proxy."""
    yield gcs_bucket(gcs_fault_proxy.url), gcs_fault_proxy


# --- one contract, both backends ------------------------------------------------------------------
def test_written_object_reads_back_with_its_generation(bucket: Bucket) -> None:
    generation = bucket.store.write_bytes(bucket.uri("a/b.json"), b'{"x": 1}')
    assert bucket.store.read_bytes(bucket.uri("a/b.json")) == (b'{"x": 1}', generation)


def test_every_write_gets_a_new_generation(bucket: Bucket) -> None:
    generations = [bucket.store.write_bytes(bucket.uri("counter"), str(i).encode()) for i in range(5)]
    assert len(set(generations)) == 5


def test_metadata_and_content_type_round_trip(bucket: Bucket) -> None:
    uri = bucket.uri("datasets/alice.zip")
    metadata = {"model-name": "alice", "epochs": "3"}
    generation = bucket.store.write_bytes(uri, b"PK..", content_type="application/zip", metadata=metadata)
    info = bucket.store.stat(uri)
    assert info is not None
    assert (info.generation, info.size, info.metadata, info.content_type) == (
        generation,
        4,
        metadata,
        "application/zip",
    )
    assert info.uri == uri and info.name == "datasets/alice.zip"


def test_create_only_write_conflicts_when_object_exists(bucket: Bucket) -> None:
    uri = bucket.uri("jobs/1/job.json")
    bucket.store.write_bytes(uri, b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.store.write_bytes(uri, b"second", if_generation_match=0)
    assert bucket.store.read_bytes(uri)[0] == b"first"


def test_write_with_stale_generation_conflicts(bucket: Bucket) -> None:
    uri = bucket.uri("jobs/1/job.json")
    old = bucket.store.write_bytes(uri, b"v1")
    bucket.store.write_bytes(uri, b"v2", if_generation_match=old)
    with pytest.raises(PreconditionFailed):
        bucket.store.write_bytes(uri, b"v3", if_generation_match=old)
    assert bucket.store.read_bytes(uri)[0] == b"v2"


def test_write_with_current_generation_succeeds(bucket: Bucket) -> None:
    uri = bucket.uri("jobs/1/job.json")
    current = bucket.store.write_bytes(uri, b"v1")
    new = bucket.store.write_bytes(uri, b"v2", if_generation_match=current)
    assert bucket.store.read_bytes(uri) == (b"v2", new)


def test_missing_object_stats_as_none_and_reads_as_not_found(bucket: Bucket) -> None:
    assert bucket.store.stat(bucket.uri("nope")) is None
    with pytest.raises(NotFound):
        bucket.store.read_bytes(bucket.uri("nope"))
    with pytest.raises(NotFound):
        bucket.store.download_file(bucket.uri("nope"), Path("/tmp/never-written"))


def test_list_returns_objects_under_a_prefix_only(bucket: Bucket) -> None:
    for name in ("jobs/a/job.json", "jobs/a/work/f0.npy", "jobs/ab/job.json", "other/x"):
        bucket.store.write_bytes(bucket.uri(name), b"1", content_type="text/plain")
    assert [i.name for i in bucket.store.list(bucket.uri("jobs/a/"))] == [
        "jobs/a/job.json",
        "jobs/a/work/f0.npy",
    ]
    assert [i.name for i in bucket.store.list(bucket.uri("jobs/a"))] == [
        "jobs/a/job.json",
        "jobs/a/work/f0.npy",
        "jobs/ab/job.json",
    ]


def test_deleted_object_is_gone_and_deleting_again_is_fine(bucket: Bucket) -> None:
    uri = bucket.uri("tmp/x")
    bucket.store.write_bytes(uri, b"x")
    bucket.store.delete(uri)
    assert bucket.store.stat(uri) is None
    bucket.store.delete(uri)


def test_file_round_trip_through_upload_and_download(bucket: Bucket, tmp_path: Path) -> None:
    source = tmp_path / "model.pth"
    source.write_bytes(bytes(range(256)) * 1000)
    generation = bucket.store.upload_file(source, bucket.uri("models/alice/alice.pth"))
    target = tmp_path / "out" / "alice.pth"
    info = bucket.store.download_file(bucket.uri("models/alice/alice.pth"), target)
    assert target.read_bytes() == source.read_bytes()
    assert (info.generation, info.size) == (generation, source.stat().st_size)


def test_downloaded_file_is_readable_by_others_like_any_written_file(bucket: Bucket, tmp_path: Path) -> None:
    source = tmp_path / "model.pth"
    source.write_bytes(b"weights")
    bucket.store.upload_file(source, bucket.uri("models/alice/alice.pth"))
    target = tmp_path / "out" / "alice.pth"
    bucket.store.download_file(bucket.uri("models/alice/alice.pth"), target)
    assert target.stat().st_mode & 0o777 == source.stat().st_mode & 0o777  # a plain open()'s mode


def _increment_with_cas(store: ObjectStore, uri: str, times: int) -> None:
    """Adds 1 to a counter object `times` times, re-reading after every lost race."""
    for _ in range(times):
        while True:
            data, generation = store.read_bytes(uri)
            try:
                store.write_bytes(uri, str(int(data) + 1).encode(), if_generation_match=generation)
                break
            except PreconditionFailed:
                continue


def test_concurrent_compare_and_swap_loses_no_update(bucket: Bucket) -> None:
    uri = bucket.uri("counter")
    bucket.store.write_bytes(uri, b"0")
    threads = [threading.Thread(target=_increment_with_cas, args=(bucket.store, uri, 10)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bucket.store.read_bytes(uri)[0] == b"40"


# --- file:// specifics ----------------------------------------------------------------------------
def _increment_in_process(root: str, uri: str, times: int) -> None:
    _increment_with_cas(open_store(f"file://{root}"), uri, times)


def test_local_compare_and_swap_is_safe_across_processes(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/state/counter"
    open_store(f"file://{tmp_path}/state").write_bytes(uri, b"0")
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_increment_in_process, args=(str(tmp_path / "state"), uri, 15)) for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert open_store(f"file://{tmp_path}/state").read_bytes(uri)[0] == b"45"


def test_file_dropped_in_by_another_program_is_an_object(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/inbox")
    dropped = tmp_path / "inbox" / "datasets" / "alice.zip"
    dropped.parent.mkdir(parents=True)
    dropped.write_bytes(b"PK\x03\x04")
    info = store.stat(f"file://{dropped}")
    assert info is not None
    assert (info.bucket, info.name, info.size) == (str(tmp_path / "inbox"), "datasets/alice.zip", 4)
    assert info.content_type == "application/zip"
    with pytest.raises(PreconditionFailed):
        store.write_bytes(f"file://{dropped}", b"other", if_generation_match=info.generation + 1)


def test_overwrite_by_another_program_breaks_the_compare_and_swap(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    uri = f"file://{tmp_path}/job.json"
    generation = store.write_bytes(uri, b"v1", metadata={"k": "v"})
    time.sleep(0.01)
    (tmp_path / "job.json").write_bytes(b"edited by hand")
    with pytest.raises(PreconditionFailed):
        store.write_bytes(uri, b"v2", if_generation_match=generation)
    assert store.stat(uri).metadata == {}  # the sidecar described the replaced version, not this one


def test_local_bookkeeping_files_are_never_listed(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    store.write_bytes(f"file://{tmp_path}/a/x", b"1", metadata={"k": "v"})
    store.write_bytes(f"file://{tmp_path}/a/x", b"2")
    assert [i.name for i in store.list(f"file://{tmp_path}/")] == ["a/x"]


def test_unsupported_storage_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gs:// or file://"):
        open_store("s3://bucket")


def test_local_store_maps_uri_to_path() -> None:
    assert isinstance(open_store("file:///tmp/x"), LocalStore)
    assert path_from_uri("file:///tmp/a%20b/c") == Path("/tmp/a b/c")


# --- gs:// against faults -------------------------------------------------------------------------
@pytest.mark.emulator
def test_injected_503s_are_retried_until_the_write_lands(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    proxy.fail_next(3)
    generation = bucket.store.write_bytes(bucket.uri("jobs/1/job.json"), b"{}", if_generation_match=0)
    assert proxy.injected() == 3
    assert bucket.store.read_bytes(bucket.uri("jobs/1/job.json")) == (b"{}", generation)


@pytest.mark.emulator
def test_injected_429_on_read_is_retried(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    bucket.store.write_bytes(bucket.uri("a"), b"data")
    proxy.fail_next(2, status=429, method="GET")
    assert bucket.store.read_bytes(bucket.uri("a"))[0] == b"data"
    assert proxy.injected() == 2


@pytest.mark.emulator
def test_persistent_503_ends_in_transient_storage_error(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    proxy.fail_always()
    started = time.monotonic()
    with pytest.raises(TransientStorageError) as caught:
        bucket.store.write_bytes(bucket.uri("jobs/1/job.json"), b"{}")
    assert caught.value.retryable and caught.value.code == "storage_unavailable"
    assert proxy.injected() == FAST_RETRY.attempts
    assert time.monotonic() - started < FAST_RETRY.deadline


@pytest.mark.emulator
def test_conflict_is_not_retried(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    bucket.store.write_bytes(bucket.uri("job.json"), b"v1")
    before = len(proxy.requests)
    with pytest.raises(PreconditionFailed):
        bucket.store.write_bytes(bucket.uri("job.json"), b"v2", if_generation_match=0)
    assert len(proxy.requests) - before == 1


@pytest.mark.emulator
def test_permanent_client_error_is_not_retried(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    proxy.fail_next(1, status=403)
    before = len(proxy.requests)
    with pytest.raises(StorageError) as caught:
        bucket.store.read_bytes(bucket.uri("a"))
    assert not caught.value.retryable
    assert len(proxy.requests) - before == 1


@pytest.mark.emulator
def test_conditional_write_whose_reply_was_lost_is_not_a_conflict(
    proxied: tuple[Bucket, HttpFaultProxy],
) -> None:
    bucket, proxy = proxied
    uri = bucket.uri("jobs/1/job.json")
    current = bucket.store.write_bytes(uri, b"v1")
    proxy.lose_replies_next(1, method="POST")  # the write lands, its reply is a 503; the retry sees 412
    new = bucket.store.write_bytes(uri, b"v2", if_generation_match=current, metadata={"owner": "me"})
    assert proxy.injected() == 1
    assert bucket.store.read_bytes(uri) == (b"v2", new)
    assert new != current


@pytest.mark.emulator
def test_lost_reply_does_not_hide_a_real_conflict(proxied: tuple[Bucket, HttpFaultProxy]) -> None:
    bucket, proxy = proxied
    uri = bucket.uri("jobs/1/job.json")
    bucket.store.write_bytes(uri, b"theirs", if_generation_match=0)
    proxy.fail_next(1, method="POST")  # first try fails before reaching the server
    with pytest.raises(PreconditionFailed):
        bucket.store.write_bytes(uri, b"mine", if_generation_match=0)
    assert proxy.injected() == 1


def test_unreachable_storage_fails_within_the_retry_deadline() -> None:
    closed_port = _closed_port()
    store = GcsStore(lambda: default_client(f"http://127.0.0.1:{closed_port}"), policy=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(TransientStorageError):
        store.read_bytes("gs://bucket/x")
    assert time.monotonic() - started < FAST_RETRY.deadline


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transient_cases() -> list[tuple[BaseException, bool]]:
    import requests
    from google.api_core import exceptions as gexc

    return [
        (gexc.TooManyRequests("slow down"), True),
        (gexc.InternalServerError("oops"), True),
        (gexc.BadGateway("proxy"), True),
        (gexc.ServiceUnavailable("down"), True),
        (gexc.GatewayTimeout("slow"), True),
        (gexc.DeadlineExceeded("deadline"), True),
        (gexc.RetryError("gave up", cause=gexc.ServiceUnavailable("down")), True),
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("read"), True),
        (ConnectionResetError("reset"), True),
        (TransientStorageError("kept failing"), True),
        (gexc.MethodNotImplemented("501"), False),
        (gexc.NotFound("404"), False),
        (gexc.PreconditionFailed("412"), False),
        (gexc.Forbidden("403"), False),
        (gexc.BadRequest("400"), False),
        (gexc.InvalidArgument("bad topic name"), False),
        (PreconditionFailed("lost the race"), False),
        (ValueError("bug"), False),
    ]


@pytest.mark.parametrize(("error", "transient"), _transient_cases(), ids=lambda v: type(v).__name__)
def test_only_429_5xx_unavailable_deadline_and_connection_errors_are_retried(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_storage_client_is_created_once_and_lazily() -> None:
    calls: list[int] = []
    factory: Callable[[], object] = lambda: calls.append(1) or object()  # noqa: E731
    store = GcsStore(factory)
    assert calls == []
    assert store.client is store.client
    assert calls == [1]


def test_local_objects_are_readable_by_others_like_any_written_file(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    store.write_bytes(f"file://{tmp_path}/models/alice/alice.pth", b"weights")
    src = tmp_path / "local.bin"
    src.write_bytes(b"x")
    store.upload_file(src, f"file://{tmp_path}/models/alice/report.json")
    expected = src.stat().st_mode & 0o777  # what a plain open() gives under this umask
    for name in ("alice.pth", "report.json"):
        assert (tmp_path / "models" / "alice" / name).stat().st_mode & 0o777 == expected


def test_local_object_metadata_is_readable_by_others_like_its_data(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    uri = f"file://{tmp_path}/models/alice/alice.pth"
    store.write_bytes(uri, b"weights", metadata={"epochs": "2"})
    data_mode = (tmp_path / "models" / "alice" / "alice.pth").stat().st_mode & 0o777
    bookkeeping = [p for p in (tmp_path / "models" / "alice").iterdir() if p.name.endswith(".meta.json")]
    assert bookkeeping
    assert all(p.stat().st_mode & 0o777 == data_mode for p in bookkeeping)


# --- file:// bookkeeping stays out of users' folders ------------------------------------------------
def test_writing_a_model_leaves_only_the_model_files_in_the_output_folder(tmp_path: Path) -> None:
    from consumer.work.artifacts import CONTENT_TYPES, copy_to_output

    built = tmp_path / "built"
    built.mkdir()
    files = {
        "model": built / "alice.pth",
        "index": built / "added_IVF1_Flat_nprobe_1_alice_v2.index",
        "preview": built / "preview.wav",
        "report": built / "report.json",
        "zip": built / "alice.zip",
    }
    for path in files.values():
        path.write_bytes(b"bytes of " + path.name.encode())
    locks = tmp_path / "locks"
    # One store serves every file:// URI, rooted at the state bucket (as the service wires it).
    store = LocalStore(root=tmp_path / "state", lock_dir=locks)
    out = tmp_path / "my-models" / "alice"

    copy_to_output(store, f"file://{out}/", files)
    copy_to_output(store, f"file://{out}/", files)  # a rerun overwrites in place

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files.values())
    assert [p.suffix for p in locks.iterdir()] and all(p.suffix == ".lock" for p in locks.iterdir())
    for path in files.values():
        info = store.stat(f"file://{out}/{path.name}")
        assert info is not None and info.content_type == CONTENT_TYPES[path.suffix]
        assert info.metadata == {}


def test_lock_files_are_kept_outside_the_bucket_and_still_exclude_writers(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    first = LocalStore(root=tmp_path / "bucket", lock_dir=locks)
    second = LocalStore(root=tmp_path / "elsewhere", lock_dir=locks)  # another store, same machine
    uri = f"file://{tmp_path}/bucket/jobs/1/job.json"

    threads = [
        threading.Thread(target=_increment_with_cas, args=(store, uri, 20)) for store in (first, second)
    ]
    first.write_bytes(uri, b"0")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert first.read_bytes(uri)[0] == b"40"
    assert not [p for p in (tmp_path / "bucket").rglob("*") if p.name.endswith(".lock")]
    assert len(list(locks.iterdir())) == 1


def test_custom_metadata_still_round_trips_without_lock_files_beside_it(tmp_path: Path) -> None:
    store = LocalStore(root=tmp_path, lock_dir=tmp_path.parent / f"{tmp_path.name}-locks")
    uri = f"file://{tmp_path}/datasets/alice.zip"
    store.write_bytes(uri, b"PK..", metadata={"model-name": "alice"})
    store.write_bytes(uri, b"PK...")  # a later version without metadata reads as having none

    info = store.stat(uri)
    assert info is not None and info.metadata == {} and info.content_type == "application/zip"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".lock")]
