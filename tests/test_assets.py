"""The assets manifest, the store that finds files, and the download that verifies them (no network)."""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.error
from pathlib import Path

import pytest

from rvc_core import assets as assets_module
from rvc_core.assets import (
    MANIFEST,
    Asset,
    AssetStore,
    TransientFetchError,
    assets_cli,
    download_assets,
)
from rvc_core.errors import AssetCorrupt, AssetMissing, ConfigError

PAYLOADS = {"model.pt": b"weights of a model\n" * 10, "sub/other.pth": b"other weights"}


def fake_asset(name: str, payload: bytes, *, size: int | None = -1, sha256: str | None = "") -> Asset:
    """An entry describing `payload`; pass size/sha256 explicitly to describe something else."""
    return Asset(
        name=name,
        url=f"https://example.invalid/{name}",
        size_bytes=len(payload) if size == -1 else size,
        sha256=hashlib.sha256(payload).hexdigest() if sha256 == "" else sha256,
        purpose="test",
    )


FAKE_MANIFEST = tuple(fake_asset(name, payload) for name, payload in PAYLOADS.items())


class FakeFetcher:
    """Serves PAYLOADS by URL, counting calls; `serve` overrides what a URL returns."""

    def __init__(self, serve: dict[str, bytes] | None = None) -> None:
        self.calls: list[str] = []
        self.serve = serve or {}

    def __call__(self, url: str, dest: Path) -> None:
        self.calls.append(url)
        name = url.removeprefix("https://example.invalid/")
        dest.write_bytes(self.serve.get(name, PAYLOADS[name]))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- the manifest ----------------------------------------------------------------------------------
def test_manifest_names_are_unique() -> None:
    names = [asset.name for asset in MANIFEST]
    assert len(names) == len(set(names))


def test_every_asset_has_a_pinned_hugging_face_url_for_its_name() -> None:
    pinned = re.compile(r"https://huggingface\.co/lj1995/VoiceConversionWebUI/resolve/[0-9a-f]{40}/(.+)")
    for asset in MANIFEST:
        match = pinned.fullmatch(asset.url)
        assert match and match.group(1) == asset.name, asset.url


def test_known_hashes_are_sha256_hex() -> None:
    for asset in MANIFEST:
        assert asset.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", asset.sha256), asset.name


def test_manifest_has_the_weights_training_needs_at_every_rate() -> None:
    names = {asset.name for asset in MANIFEST if not asset.optional}
    assert {"hubert_base.pt", "rmvpe.pt"} <= names
    for rate in ("32k", "40k", "48k"):
        assert {f"pretrained_v2/f0G{rate}.pth", f"pretrained_v2/f0D{rate}.pth"} <= names


# --- choosing the store ----------------------------------------------------------------------------
def test_assets_option_names_the_folder(tmp_path: Path) -> None:
    store = AssetStore.from_option(str(tmp_path), {})
    assert store.root == tmp_path and not store.random_init


def test_assets_none_means_random_weights() -> None:
    assert AssetStore.from_option("none", {}).random_init


def test_environment_gives_the_default_folder(tmp_path: Path) -> None:
    store = AssetStore.from_option(None, {"RVC_ASSETS": str(tmp_path)})
    assert store.root == tmp_path


def test_option_wins_over_environment(tmp_path: Path) -> None:
    store = AssetStore.from_option(str(tmp_path), {"RVC_ASSETS": "none"})
    assert store.root == tmp_path


def test_no_option_and_no_environment_explains_how_to_pass_one() -> None:
    with pytest.raises(ConfigError) as caught:
        AssetStore.from_option(None, {})
    assert "--assets DIR" in caught.value.message
    assert "RVC_ASSETS" in caught.value.message
    assert "--assets none" in caught.value.message


def test_nonexistent_assets_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        AssetStore.from_option(str(tmp_path / "nope"), {})


# --- finding and verifying files -------------------------------------------------------------------
def test_missing_file_names_it_the_folder_the_url_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(AssetMissing) as caught:
        AssetStore(tmp_path).path("rmvpe.pt")
    message = caught.value.message
    rmvpe = next(a for a in MANIFEST if a.name == "rmvpe.pt")
    assert "rmvpe.pt" in message and str(tmp_path) in message and rmvpe.url in message
    assert "python -m rvc_core assets download --dest DIR" in message


def test_random_store_has_no_files() -> None:
    with pytest.raises(AssetMissing, match="--assets none"):
        AssetStore(None).path("rmvpe.pt")


def test_present_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(PAYLOADS["model.pt"])
    assert AssetStore(tmp_path, manifest=FAKE_MANIFEST).path("model.pt") == tmp_path / "model.pt"


def test_verify_accepts_the_right_bytes(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(PAYLOADS["model.pt"])
    AssetStore(tmp_path, manifest=FAKE_MANIFEST).verify("model.pt")


def test_verify_detects_a_wrong_size(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(PAYLOADS["model.pt"][:-1])
    with pytest.raises(AssetCorrupt, match="bytes"):
        AssetStore(tmp_path, manifest=FAKE_MANIFEST).verify("model.pt")


def test_verify_detects_a_wrong_hash_of_the_right_size(tmp_path: Path) -> None:
    tampered = bytearray(PAYLOADS["model.pt"])
    tampered[0] ^= 1
    (tmp_path / "model.pt").write_bytes(bytes(tampered))
    with pytest.raises(AssetCorrupt, match="SHA-256"):
        AssetStore(tmp_path, manifest=FAKE_MANIFEST).verify("model.pt")


def test_verify_without_known_values_checks_presence_only(tmp_path: Path) -> None:
    manifest = (fake_asset("model.pt", b"", size=None, sha256=None),)
    (tmp_path / "model.pt").write_bytes(b"anything")
    AssetStore(tmp_path, manifest=manifest).verify("model.pt")
    with pytest.raises(AssetMissing):
        AssetStore(tmp_path / "empty", manifest=manifest).verify("model.pt")


def test_random_weights_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = AssetStore(None)
    with caplog.at_level(logging.WARNING):
        store.warn_if_random()
        store.warn_if_random()
    warnings = [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_folder_store_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        AssetStore(tmp_path).warn_if_random()
    assert not caplog.records


def test_plain_random_store_builds_tiny_networks() -> None:
    assert not AssetStore.from_option("none", {}).full_size_random


def test_random_full_store_has_random_weights_and_no_folder() -> None:
    store = AssetStore.random_full()
    assert store.random_init and store.full_size_random and store.root is None


def test_full_size_random_with_an_assets_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        AssetStore(tmp_path, full_size_random=True)


def test_random_full_warning_names_its_option(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        AssetStore.random_full().warn_if_random()
    (record,) = [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert "--assets random-full" in record.getMessage() and "benchmark" in record.getMessage()


def test_random_full_store_asked_for_a_file_names_its_option() -> None:
    with pytest.raises(AssetMissing, match="--assets random-full"):
        AssetStore.random_full().path("rmvpe.pt")


# --- downloading -----------------------------------------------------------------------------------
def test_download_writes_verified_files(tmp_path: Path) -> None:
    paths = download_assets(tmp_path, fetch=FakeFetcher(), manifest=FAKE_MANIFEST)
    assert paths == [tmp_path / "model.pt", tmp_path / "sub/other.pth"]
    assert [p.read_bytes() for p in paths] == list(PAYLOADS.values())


def test_download_is_idempotent(tmp_path: Path) -> None:
    download_assets(tmp_path, fetch=FakeFetcher(), manifest=FAKE_MANIFEST)
    again = FakeFetcher()
    download_assets(tmp_path, fetch=again, manifest=FAKE_MANIFEST)
    assert again.calls == []


def test_download_replaces_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"truncated")
    fetcher = FakeFetcher()
    download_assets(tmp_path, ["model.pt"], fetch=fetcher, manifest=FAKE_MANIFEST)
    assert (tmp_path / "model.pt").read_bytes() == PAYLOADS["model.pt"]
    assert len(fetcher.calls) == 1


def test_checksum_failure_leaves_no_file_behind(tmp_path: Path) -> None:
    tampered = FakeFetcher(serve={"model.pt": b"x" * len(PAYLOADS["model.pt"])})
    with pytest.raises(AssetCorrupt):
        download_assets(tmp_path, ["model.pt"], fetch=tampered, manifest=FAKE_MANIFEST)
    assert files_under(tmp_path) == []


def test_transient_failure_is_retried(tmp_path: Path) -> None:
    attempts: list[str] = []

    def flaky(url: str, dest: Path) -> None:
        attempts.append(url)
        if len(attempts) == 1:
            dest.write_bytes(b"partial")
            raise TransientFetchError("HTTP 503")
        FakeFetcher()(url, dest)

    download_assets(tmp_path, ["model.pt"], fetch=flaky, manifest=FAKE_MANIFEST, backoff_s=0)
    assert len(attempts) == 2
    assert (tmp_path / "model.pt").read_bytes() == PAYLOADS["model.pt"]


def test_persistent_transient_failure_gives_up_without_a_file(tmp_path: Path) -> None:
    def always_busy(url: str, dest: Path) -> None:
        raise TransientFetchError("HTTP 429")

    with pytest.raises(AssetMissing, match="3 attempts"):
        download_assets(
            tmp_path, ["model.pt"], fetch=always_busy, manifest=FAKE_MANIFEST, attempts=3, backoff_s=0
        )
    assert files_under(tmp_path) == []


def test_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    attempts: list[str] = []

    def not_found(url: str, dest: Path) -> None:
        attempts.append(url)
        raise AssetMissing("HTTP 404")

    with pytest.raises(AssetMissing):
        download_assets(tmp_path, ["model.pt"], fetch=not_found, manifest=FAKE_MANIFEST, backoff_s=0)
    assert len(attempts) == 1


def test_default_download_skips_optional_assets(tmp_path: Path) -> None:
    optional = Asset(
        "alt/format.bin", "https://example.invalid/alt/format.bin", None, None, "alt", optional=True
    )
    fetcher = FakeFetcher()
    download_assets(tmp_path, fetch=fetcher, manifest=(*FAKE_MANIFEST, optional))
    assert not any("alt/format.bin" in url for url in fetcher.calls)


def test_unknown_asset_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown asset"):
        download_assets(tmp_path, ["nope.pt"], fetch=FakeFetcher(), manifest=FAKE_MANIFEST)


class _HttpErrorOpener:
    def __init__(self, code: int) -> None:
        self.code = code

    def __call__(self, request, timeout: float):
        raise urllib.error.HTTPError(request.full_url, self.code, "status", {}, None)


@pytest.mark.parametrize("code", [429, 500, 503])
def test_http_busy_and_server_errors_count_as_transient(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int
) -> None:
    monkeypatch.setattr(assets_module.urllib.request, "urlopen", _HttpErrorOpener(code))
    with pytest.raises(TransientFetchError):
        assets_module._http_fetch("https://example.invalid/x", tmp_path / "x")


def test_http_not_found_is_permanent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets_module.urllib.request, "urlopen", _HttpErrorOpener(404))
    with pytest.raises(AssetMissing, match="404"):
        assets_module._http_fetch("https://example.invalid/x", tmp_path / "x")


def test_timeout_counts_as_transient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def times_out(request, timeout: float):
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(assets_module.urllib.request, "urlopen", times_out)
    with pytest.raises(TransientFetchError):
        assets_module._http_fetch("https://example.invalid/x", tmp_path / "x")


# --- command line ----------------------------------------------------------------------------------
def test_list_shows_which_assets_are_present(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rmvpe.pt").write_bytes(b"x")
    assert assets_cli(["list", "--assets", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("present") and "rmvpe.pt" in line for line in lines)
    assert any(line.startswith("missing") and "hubert_base.pt" in line for line in lines)


def test_list_uses_the_environment_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert assets_cli(["list"], env={"RVC_ASSETS": str(tmp_path)}) == 0
    assert str(tmp_path) in capsys.readouterr().out


def test_download_of_unknown_name_exits_with_error_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert assets_cli(["download", "--dest", str(tmp_path), "--only", "nope.pt"]) == 1
    assert capsys.readouterr().err.startswith("error: invalid_config:")
