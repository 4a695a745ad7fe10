"""Safe intake of the user's dataset zip: validate the whole archive, then extract its audio files.

Every entry of the central directory is checked before anything is written, so a rejected zip
leaves no trace. Extracted files get safe internal names (`f0003.wav`); the user's names are kept
only as data (`SourceFile.original_name`).

How a bad upload is classified (each is a `BadDataset` with a stable code):

- `not_a_zip`: the file does not start like a zip and holds no readable zip directory: an empty
  file, random bytes, a WAV renamed `.zip`, a text file, a RAR or 7-Zip archive.
- `zip_corrupt`: it starts like a zip (or its directory was found) but is damaged: a truncated
  upload whose central directory is missing, a damaged directory, a bad CRC, a member whose
  compressed data is cut short or invalid, or data that ends before its declared size.
- `zip_encrypted`: an audio entry is password-protected.
- `zip_unsupported`: an audio entry uses a compression method Python cannot read (e.g. Deflate64).
- `zip_unsafe`: any entry would land outside the destination (`..`, absolute or drive paths,
  backslash traversal) or is a symbolic link, whether or not it is audio.
- `zip_bomb`: too many entries, or the audio entries are too large or too compressed, either as
  declared in the directory or as actually produced while extracting (a header that understates
  the size is caught by counting the real bytes). The compression ratio is judged on the bytes, not
  on what they sound like: a WAV or AIFF entry whose own header declares exactly the entry's size
  (silence, which deflates a thousandfold) is exempt from the ratio limit up to
  `ZipLimits.ratio_exempt_max_bytes`; it is still bound by the absolute size limits, and a silent
  dataset is then rejected later, by preparation, as `too_little_audio`.
- `no_audio`: no entry looks like audio (decodability is checked later, by the decoder).
"""

from __future__ import annotations

import contextlib
import copy
import lzma
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rvc_core.atomic import atomic_file
from rvc_core.errors import NoAudio, NotAZip, ZipBomb, ZipCorrupt, ZipEncrypted, ZipUnsafe, ZipUnsupported

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".m4a",
        ".aac",
        ".mp4",
        ".aif",
        ".aiff",
        ".wma",
    }
)
READABLE_COMPRESSION: dict[int, str] = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
UNREADABLE_COMPRESSION_NAMES: dict[int, str] = {
    9: "Deflate64",
    93: "Zstandard",
    95: "XZ",
    96: "JPEG",
    97: "WavPack",
    98: "PPMd",
    99: "AES",
}
SYSTEM_FILES: dict[str, str] = {"thumbs.db": "Thumbs.db", "desktop.ini": "desktop.ini"}
# What a file that is not a zip most likely is, by its first bytes (for a helpful message).
FILE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"RIFF", "a WAV (RIFF) file"),
    (b"fLaC", "a FLAC file"),
    (b"OggS", "an Ogg file"),
    (b"ID3", "an MP3 file"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\x1f\x8b", "a gzip file"),
)
ZIP_SIGNATURES: tuple[bytes, ...] = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

_MIB = 1 << 20
_GIB = 1 << 30
RATIO_CHECK_MIN_BYTES = _MIB  # below this, high compression is normal (silence) and harmless
CHUNK_BYTES = _MIB  # extraction streams in pieces of this size

_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED_DATA = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[\\/]")
_SPEAKER_FOLDER = re.compile(r"[0-9]+")
# Errors that zipfile and the decompressors raise for damaged member data.
_MEMBER_DATA_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    struct.error,
    ValueError,
)


@dataclass(frozen=True)
class ZipLimits:
    """Bounds that keep a hostile zip from filling the disk."""

    max_total_uncompressed_bytes: int = 8 * _GIB  # bytes, all audio entries together
    max_entries: int = 10_000  # entries in the central directory, of any kind
    max_ratio: float = 200.0  # uncompressed/compressed, per entry and overall, above RATIO_CHECK_MIN_BYTES
    max_entry_bytes: int = 2 * _GIB  # bytes, one uncompressed entry
    # bytes: up to this size, an entry that is a well-formed WAV/AIFF of exactly its declared size is
    # exempt from max_ratio (silence compresses far beyond it); above it, the ratio applies to all
    ratio_exempt_max_bytes: int = 512 * _MIB


@dataclass(frozen=True)
class SourceFile:
    id: str  # safe id, e.g. "f0003"
    original_name: str  # path inside the zip, as the user named it
    path: Path  # the extracted file, `<dest>/<id><lowercased ext>`
    speaker_id: int
    size_bytes: int


@dataclass(frozen=True)
class IgnoredEntry:
    name: str  # path inside the zip
    reason: str


@dataclass(frozen=True)
class ExtractedDataset:
    files: tuple[SourceFile, ...]
    ignored: tuple[IgnoredEntry, ...]
    speakers: tuple[int, ...]  # sorted, distinct

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """Plain dicts for `extract.json`; with `relative_to`, paths are stored relative to it so the
        work dir can move between machines."""
        return {
            "files": [
                {
                    "id": f.id,
                    "original_name": f.original_name,
                    "path": str(f.path.relative_to(relative_to) if relative_to else f.path),
                    "speaker_id": f.speaker_id,
                    "size_bytes": f.size_bytes,
                }
                for f in self.files
            ],
            "ignored": [{"name": i.name, "reason": i.reason} for i in self.ignored],
            "speakers": list(self.speakers),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path | None = None) -> ExtractedDataset:
        """Inverse of `to_json`; relative paths are resolved against `base` when given."""

        def resolve(path: str) -> Path:
            return base / path if base is not None and not Path(path).is_absolute() else Path(path)

        return cls(
            files=tuple(
                SourceFile(
                    id=str(f["id"]),
                    original_name=str(f["original_name"]),
                    path=resolve(f["path"]),
                    speaker_id=int(f["speaker_id"]),
                    size_bytes=int(f["size_bytes"]),
                )
                for f in data["files"]
            ),
            ignored=tuple(
                IgnoredEntry(name=str(i["name"]), reason=str(i["reason"])) for i in data["ignored"]
            ),
            speakers=tuple(int(s) for s in data["speakers"]),
        )


@dataclass(frozen=True)
class _AudioEntry:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # path components, with `\` treated as a separator too
    extension: str  # lowercased, with the dot


def extract_dataset(zip_path: Path, dest: Path, limits: ZipLimits = ZipLimits()) -> ExtractedDataset:  # noqa: B008
    """Validates `zip_path` completely, then extracts its audio entries into `dest` as `<id><ext>`.

    Speakers: when every audio file lies under a top-level folder named by a non-negative integer
    (`0/…`, `1/…`), that integer is its speaker id; otherwise every file is speaker 0.
    Raises a `BadDataset` subclass (see the module docstring); on any failure, whatever this call
    wrote is removed again.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    with _open_zip(zip_path) as archive:
        audio, ignored = _validate(archive.infolist(), limits, lambda info: _is_whole_pcm(archive, info))
        speakers = _speaker_ids(audio)
        paths = _extract_all(archive, audio, dest, limits)
    files = tuple(
        SourceFile(
            id=path.stem,
            original_name=entry.info.filename,
            path=path,
            speaker_id=speaker,
            size_bytes=entry.info.file_size,
        )
        for entry, path, speaker in zip(audio, paths, speakers, strict=True)
    )
    return ExtractedDataset(files=files, ignored=tuple(ignored), speakers=tuple(sorted(set(speakers))))


# --- opening --------------------------------------------------------------------------------------
def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    with open(zip_path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise NotAZip(f"{zip_path.name} is empty (0 bytes); upload a .zip of your recordings")
    try:
        return zipfile.ZipFile(zip_path)
    except NotImplementedError as exc:
        raise ZipUnsupported(f"{zip_path.name} uses a zip feature that cannot be read: {exc}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, OverflowError) as exc:
        if head.startswith(ZIP_SIGNATURES):
            raise ZipCorrupt(
                f"{zip_path.name} starts like a zip but its central directory is missing or damaged "
                f"(an incomplete upload?): {exc}"
            ) from None
        looks_like = next((what for magic, what in FILE_SIGNATURES if head.startswith(magic)), None)
        hint = f"it looks like {looks_like}" if looks_like else "no zip structure was found in it"
        raise NotAZip(f"{zip_path.name} is not a zip file: {hint}") from None


# --- validation (writes nothing) ------------------------------------------------------------------
def _validate(
    infos: list[zipfile.ZipInfo],
    limits: ZipLimits,
    is_whole_pcm: Callable[[zipfile.ZipInfo], bool] = lambda _info: False,
) -> tuple[list[_AudioEntry], list[IgnoredEntry]]:
    """Checks the whole directory; returns the audio entries (sorted by name) and the ignored ones.

    `is_whole_pcm(info)` says whether an entry is a WAV/AIFF whose header declares exactly the
    entry's size; such entries (up to `limits.ratio_exempt_max_bytes`) skip the ratio limit."""
    if len(infos) > limits.max_entries:
        raise ZipBomb(f"the zip has {len(infos)} entries; at most {limits.max_entries} are accepted")
    for info in infos:
        _check_safe(info)
    audio: list[_AudioEntry] = []
    ignored: list[IgnoredEntry] = []
    for info in infos:
        # "." components ("./take1.wav") are harmless and must not make the entry look hidden.
        parts = tuple(part for part in _SEPARATORS.split(info.filename) if part not in ("", "."))
        reason = _ignore_reason(info, parts)
        if reason is None:
            audio.append(_AudioEntry(info, parts, PurePosixPath(parts[-1]).suffix.lower()))
        else:
            ignored.append(IgnoredEntry(name=info.filename, reason=reason))
    ignored.sort(key=lambda e: e.name)
    if not audio:
        raise NoAudio(_no_audio_message(infos, ignored))
    ratio_checked: list[zipfile.ZipInfo] = []
    for entry in audio:
        _check_readable(entry.info)
        # Only an entry that compresses beyond the limit is opened to look at its header.
        exempt = (
            entry.info.file_size <= limits.ratio_exempt_max_bytes
            and entry.info.file_size / max(entry.info.compress_size, 1) > limits.max_ratio
            and is_whole_pcm(entry.info)
        )
        _check_size(entry.info, limits, check_ratio=not exempt)
        if not exempt:
            ratio_checked.append(entry.info)
    _check_totals([entry.info for entry in audio], ratio_checked, limits)
    order = sorted(range(len(audio)), key=lambda i: (audio[i].info.filename, i))
    return [audio[i] for i in order], ignored


def _check_safe(info: zipfile.ZipInfo) -> None:
    name = info.filename
    shown = _show(name)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ZipUnsafe(f"entry {shown} is a symbolic link; links are not accepted in a dataset zip")
    if name.startswith(("/", "\\")):
        raise ZipUnsafe(f"entry {shown} has an absolute path; it would be written outside the folder")
    if _DRIVE_PREFIX.match(name):
        raise ZipUnsafe(f"entry {shown} names a drive letter; it would be written outside the folder")
    if ".." in _SEPARATORS.split(name):
        raise ZipUnsafe(f"entry {shown} contains '..'; it would be written outside the folder")


def _ignore_reason(info: zipfile.ZipInfo, parts: tuple[str, ...]) -> str | None:
    """Why an entry is skipped, or None for an audio file to extract."""
    if not parts or info.filename.endswith(("/", "\\")) or stat.S_ISDIR(info.external_attr >> 16):
        return "directory"
    if "__MACOSX" in parts:
        return "macos resource fork (__MACOSX/)"
    if any(part.startswith(".") for part in parts):
        return "hidden file"
    system_file = SYSTEM_FILES.get(parts[-1].lower())
    if system_file:
        return f"system file ({system_file})"
    extension = PurePosixPath(parts[-1]).suffix.lower()
    if extension not in AUDIO_EXTENSIONS:
        return f"not an audio file ({extension or 'no extension'})"
    if info.file_size == 0:
        return "empty file (0 bytes)"
    return None


def _check_readable(info: zipfile.ZipInfo) -> None:
    shown = _show(info.filename)
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        raise ZipEncrypted(f"entry {shown} is password-protected; create the zip without a password")
    if info.flag_bits & _FLAG_PATCHED_DATA or info.compress_type not in READABLE_COMPRESSION:
        method = UNREADABLE_COMPRESSION_NAMES.get(info.compress_type, "unknown")
        raise ZipUnsupported(
            f"entry {shown} uses compression method {info.compress_type} ({method}), which cannot be "
            f"read; re-create the zip with standard (deflate) compression"
        )


def _ratio_too_high(uncompressed: int, compressed: int, limits: ZipLimits) -> bool:
    return uncompressed > RATIO_CHECK_MIN_BYTES and uncompressed / max(compressed, 1) > limits.max_ratio


def _check_size(info: zipfile.ZipInfo, limits: ZipLimits, *, check_ratio: bool = True) -> None:
    shown = _show(info.filename)
    if info.file_size > limits.max_entry_bytes:
        raise ZipBomb(
            f"entry {shown} declares {info.file_size} bytes uncompressed; the limit for one file is "
            f"{limits.max_entry_bytes} bytes"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if check_ratio and _ratio_too_high(info.file_size, info.compress_size, limits):
        raise ZipBomb(
            f"entry {shown} expands {ratio:.0f}x ({info.compress_size} -> {info.file_size} bytes); "
            f"the limit is {limits.max_ratio:.0f}x"
        )


def _check_totals(
    infos: list[zipfile.ZipInfo], ratio_checked: list[zipfile.ZipInfo], limits: ZipLimits
) -> None:
    """The absolute limit over every audio entry; the ratio over those not exempt from it."""
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_uncompressed_bytes:
        raise ZipBomb(
            f"the audio files declare {total} bytes uncompressed; the limit is "
            f"{limits.max_total_uncompressed_bytes} bytes"
        )
    checked = sum(info.file_size for info in ratio_checked)
    compressed = sum(info.compress_size for info in ratio_checked)
    if _ratio_too_high(checked, compressed, limits):
        ratio = checked / max(compressed, 1)
        raise ZipBomb(f"the audio files expand {ratio:.0f}x overall; the limit is {limits.max_ratio:.0f}x")


# Enough decompressed bytes to see a RIFF/WAVE or FORM/AIFF header (the size fields are in the first 12).
_HEADER_PROBE_BYTES = 12


def _is_whole_pcm(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """True when the entry starts with a WAV (RIFF…WAVE) or AIFF (FORM…AIFF/AIFC) header whose
    declared size is exactly the entry's declared uncompressed size: a real audio file of that size,
    however well it compresses. Reads only the first bytes; any trouble reading them is False (the
    entry is then judged by the ratio as before, and extraction reports real damage)."""
    try:
        with archive.open(info) as member:
            head = member.read(_HEADER_PROBE_BYTES)
    except (NotImplementedError, RuntimeError, *_MEMBER_DATA_ERRORS):
        return False
    if len(head) < _HEADER_PROBE_BYTES:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = struct.unpack("<I", head[4:8])[0] + 8
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        declared = struct.unpack(">I", head[4:8])[0] + 8
    else:
        return False
    return declared == info.file_size


def _no_audio_message(infos: list[zipfile.ZipInfo], ignored: list[IgnoredEntry]) -> str:
    accepted = ", ".join(sorted(AUDIO_EXTENSIONS))
    if not infos:
        return f"the zip is empty; it should contain audio files ({accepted})"
    listed = "; ".join(f"{_show(e.name)} ({e.reason})" for e in ignored[:10])
    more = f"; and {len(ignored) - 10} more" if len(ignored) > 10 else ""
    return (
        f"the zip contains no audio files (accepted: {accepted}). "
        f"It holds {len(infos)} {'entry' if len(infos) == 1 else 'entries'}, all ignored: {listed}{more}"
    )


def _speaker_ids(audio: list[_AudioEntry]) -> list[int]:
    """Integer top-level folders are speaker ids only when every audio file is under one."""
    if all(len(e.parts) >= 2 and _SPEAKER_FOLDER.fullmatch(e.parts[0]) for e in audio):
        return [int(e.parts[0]) for e in audio]
    return [0] * len(audio)


def _show(name: str, limit: int = 120) -> str:
    return repr(name if len(name) <= limit else name[: limit - 1] + "…")


# --- extraction -----------------------------------------------------------------------------------
def _extract_all(
    archive: zipfile.ZipFile, audio: list[_AudioEntry], dest: Path, limits: ZipLimits
) -> list[Path]:
    """Extracts each entry to `dest/f<index><ext>`; on failure removes every file and folder it made."""
    created_dirs = _make_dirs(dest)
    written: list[Path] = []
    try:
        total = 0
        for index, entry in enumerate(audio):
            target = dest / f"f{index:04d}{entry.extension}"
            total += _extract_entry(archive, entry.info, target, limits, already_written=total)
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(created_dirs):
            # A folder that something else filled meanwhile is not ours to delete.
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return written


def _make_dirs(dest: Path) -> list[Path]:
    """Creates `dest` and its missing parents; returns the folders created, outermost first."""
    missing = [folder for folder in (dest, *dest.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir()
    return list(reversed(missing))


def _extract_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ZipLimits, already_written: int
) -> int:
    """Streams one entry to `target`, counting the real bytes; returns how many were written."""
    shown = _show(info.filename)
    # zipfile stops at the declared size and trusts the CRC, which a crafted header can match; letting
    # it run two chunks further shows us a stream that outgrows its header, and we stop it ourselves.
    overreach = copy.copy(info)
    overreach.file_size = info.file_size + 2 * CHUNK_BYTES
    written = 0
    with atomic_file(target) as out:
        with _open_member(archive, overreach, shown) as member:
            while chunk := _read_chunk(member, shown):
                written += len(chunk)
                if written > info.file_size:
                    raise ZipBomb(
                        f"entry {shown} inflates beyond the {info.file_size} bytes its header declares"
                    )
                if (
                    written > limits.max_entry_bytes
                    or already_written + written > limits.max_total_uncompressed_bytes
                ):
                    raise ZipBomb(f"entry {shown} exceeds the size limits while extracting")
                out.write(chunk)
        if written != info.file_size:
            raise ZipCorrupt(f"entry {shown} ends after {written} of its {info.file_size} bytes (truncated)")
    return written


def _open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str) -> IO[bytes]:
    try:
        return archive.open(info)
    except NotImplementedError as exc:
        raise ZipUnsupported(f"entry {shown} uses a zip feature that cannot be read: {exc}") from None
    except RuntimeError as exc:  # zipfile's "encrypted, password required"
        raise ZipEncrypted(f"entry {shown} is password-protected: {exc}") from None
    except _MEMBER_DATA_ERRORS as exc:
        raise ZipCorrupt(f"entry {shown} is damaged: {exc}") from None


def _read_chunk(member: IO[bytes], shown: str) -> bytes:
    try:
        return member.read(CHUNK_BYTES)
    except _MEMBER_DATA_ERRORS as exc:
        raise ZipCorrupt(f"entry {shown} is damaged: {exc or type(exc).__name__}") from None
