"""The weight files the pipeline needs: what they are, where they come from, how to check them.

Nothing here runs at import time and nothing is downloaded at training or test time: the image build
(or a person) runs `python -m rvc_core assets download --dest DIR` once, and the pipeline only looks
files up with `AssetStore`.

Provenance of the manifest (RVC.md §6): every URL is pinned to one revision of the Hugging Face repo
`lj1995/VoiceConversionWebUI`, so the bytes behind a URL never change under a known hash. Sizes and
SHA-256 values were gathered from independent public download manifests pinned to that revision
(several agree on each value). Where a value could not be found it is `None`, and `verify` then
checks only what is known (presence, or presence and hash); `rvc_core assets list` shows which.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvc_core.atomic import atomic_path
from rvc_core.errors import AssetCorrupt, AssetMissing, ConfigError, RvcError

log = logging.getLogger(__name__)

HF_REVISION = "e6d0c1a17da07c33557852f9dfa2bd44cc75737d"
HF_BASE_URL = f"https://huggingface.co/lj1995/VoiceConversionWebUI/resolve/{HF_REVISION}"
ASSETS_ENV = "RVC_ASSETS"
DOWNLOAD_COMMAND = "python -m rvc_core assets download --dest DIR"
FETCH_TIMEOUT_S = 60.0  # seconds without data before a download attempt is abandoned
HASH_CHUNK_BYTES = 1 << 20

# The content encoder is found under either of these; the fairseq file is preferred.
HUBERT_FAIRSEQ = "hubert_base.pt"
HUBERT_HF_CONFIG = "hubert_base/config.json"
HUBERT_HF_WEIGHTS = "hubert_base/pytorch_model.bin"
RMVPE = "rmvpe.pt"


class AssetChecksumMismatch(AssetCorrupt):
    """A fetched file does not have the manifest's size or SHA-256 (it was not kept). Not retryable:
    the same source gives the same bytes until someone replaces them."""

    code = "asset_checksum_mismatch"


@dataclass(frozen=True)
class Asset:
    name: str  # path relative to the assets folder, e.g. "hubert_base.pt", "pretrained_v2/f0G40k.pth"
    url: str
    size_bytes: int | None  # None: unknown, not checked
    sha256: str | None  # lowercase hex; None: unknown, not checked
    purpose: str
    optional: bool = False  # an alternative format; not downloaded unless asked for by name


def _hf(
    name: str, size_bytes: int | None, sha256: str | None, purpose: str, *, optional: bool = False
) -> Asset:
    return Asset(name, f"{HF_BASE_URL}/{name}", size_bytes, sha256, purpose, optional)


MANIFEST: tuple[Asset, ...] = (
    _hf(
        HUBERT_FAIRSEQ,
        189_507_909,
        "f54b40fd2802423a5643779c4861af1e9ee9c1564dc9d32f54f20b5ffba7db96",
        "content features: HuBERT-base/ContentVec, fairseq checkpoint",
    ),
    _hf(
        HUBERT_HF_CONFIG,
        1_492,
        "0346950779dfb7f9316fa74ed846e2b8a22a08eedfdc5387b73f327cb1a4a7cf",
        "content features: the same encoder in Hugging Face format (config)",
        optional=True,
    ),
    _hf(
        HUBERT_HF_WEIGHTS,
        189_206_711,
        "cc8c20f4b90a520757260197a3ff2505705a7adbd20ad9eeaa4e1a9b38442ef5",
        "content features: the same encoder in Hugging Face format (weights)",
        optional=True,
    ),
    _hf(
        "rmvpe.pt",
        181_184_272,
        "6d62215f4306e3ca278246188607209f09af3dc77ed4232efdd069798c4ec193",
        "pitch: RMVPE",
    ),
    _hf(
        "pretrained_v2/f0G32k.pth",
        73_950_049,
        "2332611297b8d88c7436de8f17ef5f07a2119353e962cd93cda5806d59a1133d",
        "v2 32k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained_v2/f0D32k.pth",
        142_875_703,
        "bd7134e7793674c85474d5145d2d982e3c5d8124fc7bb6c20f710ed65808fa8a",
        "v2 32k discriminator to fine-tune",
    ),
    _hf(
        "pretrained_v2/f0G40k.pth",
        73_106_273,
        "3b2c44035e782c4b14ddc0bede9e2f4a724d025cd073f736d4f43708453adfcb",
        "v2 40k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained_v2/f0D40k.pth",
        142_875_703,
        "6b6ab091e70801b28e3f41f335f2fc5f3f35c75b39ae2628d419644ec2b0fa09",
        "v2 40k discriminator to fine-tune",
    ),
    _hf(
        "pretrained_v2/f0G48k.pth",
        75_465_569,
        "b5d51f589cc3632d4eae36a315b4179397695042edc01d15312e1bddc2b764a4",
        "v2 48k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained_v2/f0D48k.pth",
        142_875_703,
        "2269b73c7a4cf34da09aea99274dabf99b2ddb8a42cbfb065fb3c0aa9a2fc748",
        "v2 48k discriminator to fine-tune",
    ),
    _hf(
        "pretrained_v2/G40k.pth",
        None,
        "a3843da7fde33db1dab176146c70d6c2df06eafe9457f4e3aa10024e9c6a4b69",
        "v2 40k generator without pitch guidance to fine-tune",
    ),
    _hf(
        "pretrained_v2/D40k.pth",
        None,
        "471378e894e7191f89a94eda8288c5947b16bbe0b10c3f1f17efdb7a1d998242",
        "v2 40k discriminator for models without pitch guidance",
    ),
    _hf(
        "pretrained/f0G32k.pth",
        72_795_627,
        "285f524bf48bb692c76ad7bd0bc654c12bd9e5edeb784dddf7f61a789a608574",
        "v1 32k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained/f0D32k.pth",
        109_978_943,
        "294db3087236e2c75260d6179056791c9231245daf5d0485545d9e54c4057c77",
        "v1 32k discriminator to fine-tune",
    ),
    _hf(
        "pretrained/f0G40k.pth",
        72_909_665,
        "9115654aeef1995f7dd3c6fc4140bebbef0ca9760bed798105a2380a34299831",
        "v1 40k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained/f0D40k.pth",
        109_978_943,
        "7d4f5a441594b470d67579958b2fd4c6b992852ded28ff9e72eda67abcebe423",
        "v1 40k discriminator to fine-tune",
    ),
    _hf(
        "pretrained/f0G48k.pth",
        73_008_619,
        "78bc9cab27e34bcfc194f93029374d871d8b3e663ddedea32a9709e894cc8fe8",
        "v1 48k pitch-guided generator to fine-tune",
    ),
    _hf(
        "pretrained/f0D48k.pth",
        109_978_943,
        "1b84c8bf347ad1e539c842e8f2a4c36ecd9e7fb23c16041189e4877e9b07925c",
        "v1 48k discriminator to fine-tune",
    ),
)


def _by_name(manifest: Sequence[Asset]) -> dict[str, Asset]:
    return {asset.name: asset for asset in manifest}


def _lookup(manifest: Sequence[Asset], name: str) -> Asset:
    table = _by_name(manifest)
    if name not in table:
        raise ConfigError(f"unknown asset {name!r}; known assets: {', '.join(table)}")
    return table[name]


def content_encoder_choices() -> tuple[tuple[str, ...], ...]:
    """The content encoder's file sets, in order of preference (what `features.extract` loads)."""
    return ((HUBERT_FAIRSEQ,), (HUBERT_HF_CONFIG, HUBERT_HF_WEIGHTS))


def pitch_asset_names(f0_method: str) -> tuple[str, ...]:
    """The weight files a pitch method reads from the assets folder (only RMVPE needs one)."""
    return (RMVPE,) if f0_method == "rmvpe" else ()


def pretrained_asset_names(version: str, sample_rate: int) -> tuple[str, str]:
    """The generator and discriminator a job fine-tunes, as paths in a pretrained folder (RVC's
    layout, the one `job_stages.pretrained_paths` reads): `pretrained_v2/f0G40k.pth`, …."""
    from rvc_core.spec import sample_rate_label

    folder = "pretrained_v2" if version == "v2" else "pretrained"
    rate = sample_rate_label(sample_rate)
    return f"{folder}/f0G{rate}.pth", f"{folder}/f0D{rate}.pth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def mismatch(asset: Asset, path: Path) -> str | None:
    """How `path` differs from the asset's known size or hash, or None when it matches."""
    actual_size = path.stat().st_size
    if asset.size_bytes is not None and actual_size != asset.size_bytes:
        return f"{actual_size} bytes, expected {asset.size_bytes}"
    if asset.sha256 is not None:
        actual_hash = sha256_of(path)
        if actual_hash != asset.sha256:
            return f"SHA-256 {actual_hash}, expected {asset.sha256}"
    return None


def check_file(asset: Asset, path: Path) -> None:
    """Raises AssetCorrupt when `path` does not have the asset's known size or hash."""
    problem = mismatch(asset, path)
    if problem is not None:
        raise AssetCorrupt(
            f"{asset.name} at {path} has {problem}; delete it and run `{DOWNLOAD_COMMAND}` again"
        )


class AssetStore:
    """Where the weight files are: a folder laid out like the manifest, or none (random weights:
    small stand-in networks, or full-size ones with `random_full()` for benchmarks)."""

    def __init__(
        self, root: Path | None, *, manifest: Sequence[Asset] = MANIFEST, full_size_random: bool = False
    ) -> None:
        if full_size_random and root is not None:
            raise ConfigError("full-size random networks take no assets folder (root must be None)")
        self.root = Path(root) if root is not None else None
        self.manifest = tuple(manifest)
        # Benchmarks only: random weights in the real architectures, so speed and memory are real.
        self.full_size_random = full_size_random
        self._verified: set[str] = set()
        self._warned_random = False

    @classmethod
    def random_full(cls, *, manifest: Sequence[Asset] = MANIFEST) -> AssetStore:
        """No weight files; pitch and content networks are built FULL-SIZE with random weights.
        For speed and memory benchmarks on a GPU; the outputs are as meaningless as with `none`."""
        return cls(None, manifest=manifest, full_size_random=True)

    @classmethod
    def from_option(
        cls, value: str | None, env: Mapping[str, str], *, manifest: Sequence[Asset] = MANIFEST
    ) -> AssetStore:
        """`--assets DIR|none`; without the option, `$RVC_ASSETS` (same syntax)."""
        chosen = value if value else env.get(ASSETS_ENV, "")
        if not chosen:
            raise ConfigError(
                "no assets folder given: pass --assets DIR (a folder made by "
                f"`{DOWNLOAD_COMMAND}`), set {ASSETS_ENV}=DIR, or pass --assets none to run with "
                "random weights (for tests and demos only; the model will be useless)"
            )
        if chosen.strip().lower() == "none":
            return cls(None, manifest=manifest)
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise ConfigError(f"assets folder {root} does not exist; create it with `{DOWNLOAD_COMMAND}`")
        return cls(root, manifest=manifest)

    @property
    def random_init(self) -> bool:
        return self.root is None

    def asset(self, name: str) -> Asset:
        return _lookup(self.manifest, name)

    def is_present(self, name: str) -> bool:
        self.asset(name)
        return self.root is not None and (self.root / name).is_file()

    def path(self, name: str) -> Path:
        """The file's path; raises AssetMissing (with how to get it) when it is not there."""
        asset = self.asset(name)
        if self.root is None:
            raise AssetMissing(
                f"{name} is needed but the run was started with {self.random_option} (random weights); "
                f"pass --assets DIR made by `{DOWNLOAD_COMMAND}`"
            )
        path = self.root / name
        if not path.is_file():
            raise AssetMissing(
                f"{name} not found in {self.root} (looked for {path}); download it from {asset.url} "
                f"or run `{DOWNLOAD_COMMAND}` with DIR={self.root}"
            )
        return path

    def verify(self, name: str) -> None:
        """Checks size and SHA-256 where the manifest knows them (once per store and file)."""
        if name in self._verified:
            return
        check_file(self.asset(name), self.path(name))
        self._verified.add(name)

    @property
    def random_option(self) -> str:
        """How the run asked for random weights, for messages: `--assets none` or `random-full`."""
        return "--assets random-full" if self.full_size_random else "--assets none"

    def warn_if_random(self) -> None:
        if self.random_init and not self._warned_random:
            self._warned_random = True
            use = "benchmarks of speed and memory" if self.full_size_random else "tests and demos"
            log.warning(
                "!!! RANDOM WEIGHTS: running with %s. Content features, pitch and the pretrained "
                "models are random, so every output of this run is meaningless. Use it only for "
                "%s. !!!",
                self.random_option,
                use,
            )


# --- downloading ------------------------------------------------------------------------------------
Fetcher = Callable[[str, Path], None]


class TransientFetchError(Exception):
    """A failure worth retrying: HTTP 429 or 5xx, a timeout, a dropped connection."""


def _http_fetch(url: str, dest: Path) -> None:
    """Streams `url` into `dest`; transient failures are raised as TransientFetchError."""
    request = urllib.request.Request(url, headers={"User-Agent": "rvc-trainer-assets"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response, open(dest, "wb") as out:
            while chunk := response.read(HASH_CHUNK_BYTES):
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise TransientFetchError(f"HTTP {exc.code} from {url}") from exc
        raise AssetMissing(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (TimeoutError, ConnectionError) as exc:
        raise TransientFetchError(f"{type(exc).__name__} while downloading {url}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | ConnectionError):
            raise TransientFetchError(f"{exc.reason} while downloading {url}") from exc
        raise AssetMissing(f"download of {url} failed: {exc.reason}") from exc


def _fetch_with_retries(fetch: Fetcher, url: str, dest: Path, *, attempts: int, backoff_s: float) -> None:
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, max=max(backoff_s * 30, 0.0)),
        retry=tenacity.retry_if_exception_type(TransientFetchError),
        before_sleep=lambda state: log.warning("retrying %s after: %s", url, state.outcome.exception()),
        reraise=True,
    )
    try:
        retrying(fetch, url, dest)
    except TransientFetchError as exc:
        raise AssetMissing(f"download of {url} kept failing after {attempts} attempts: {exc}") from exc


def _present_and_valid(asset: Asset, path: Path) -> bool:
    if not path.is_file():
        return False
    problem = mismatch(asset, path)
    if problem is not None:
        log.warning("replacing %s, which has %s", path, problem)
    return problem is None


def download_assets(
    dest: Path,
    names: Sequence[str] | None = None,
    *,
    fetch: Fetcher | None = None,
    manifest: Sequence[Asset] = MANIFEST,
    attempts: int = 4,
    backoff_s: float = 2.0,
) -> list[Path]:
    """Fetches the named assets (default: every non-optional one) into `dest`; returns their paths.

    Files already present and valid are kept. Each download goes to a temporary file beside its
    target, is checked against the manifest's size and hash, and only then renamed into place, so an
    interrupted or corrupt download never leaves a file that looks complete.
    """
    fetcher = fetch or _http_fetch
    wanted = [_lookup(manifest, n) for n in names] if names else [a for a in manifest if not a.optional]
    dest = Path(dest)
    paths: list[Path] = []
    for asset in wanted:
        target = dest / asset.name
        if _present_and_valid(asset, target):
            log.info("%s already present and valid", asset.name)
            paths.append(target)
            continue
        log.info("downloading %s from %s", asset.name, asset.url)
        with atomic_path(target) as tmp:
            _fetch_with_retries(fetcher, asset.url, tmp, attempts=attempts, backoff_s=backoff_s)
            problem = mismatch(asset, tmp)
            if problem is not None:
                raise AssetCorrupt(f"download of {asset.url} has {problem}; {target} was left untouched")
        paths.append(target)
    return paths


# --- command line ----------------------------------------------------------------------------------
def _format_size(size_bytes: int | None) -> str:
    return "size ?" if size_bytes is None else f"{size_bytes / 1e6:.1f} MB"


def _list(store: AssetStore, out: Callable[[str], None]) -> None:
    out(f"assets folder: {store.root if store.root is not None else 'none (random weights)'}")
    for asset in store.manifest:
        status = "present" if store.is_present(asset.name) else "missing"
        checks = "+".join(
            k for k, v in (("size", asset.size_bytes), ("sha256", asset.sha256)) if v is not None
        )
        extra = ", optional" if asset.optional else ""
        out(
            f"{status:8} {asset.name:32} {_format_size(asset.size_bytes):>10}  "
            f"[checks: {checks or 'presence only'}{extra}]  {asset.purpose}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rvc_core assets", description="Manage weight files.")
    sub = parser.add_subparsers(dest="command", required=True)
    download = sub.add_parser("download", help="download and verify weight files into a folder")
    download.add_argument("--dest", required=True, type=Path, help="folder to fill (created if needed)")
    download.add_argument(
        "--only", nargs="+", metavar="NAME", help="download only these assets (default: all non-optional)"
    )
    listing = sub.add_parser("list", help="show every asset and whether the folder has it")
    listing.add_argument("--assets", help=f"assets folder (default: ${ASSETS_ENV})")
    return parser


def assets_cli(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """`download --dest DIR [--only NAME ...]` or `list [--assets DIR]`; returns the exit status."""
    args = _parser().parse_args(argv)
    environment = os.environ if env is None else env
    try:
        if args.command == "download":
            paths = download_assets(args.dest, args.only)
            print(f"{len(paths)} asset(s) ready in {args.dest}")
        else:
            _list(AssetStore.from_option(args.assets, environment), print)
    except RvcError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0
