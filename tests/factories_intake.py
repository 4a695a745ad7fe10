"""Factories for intake and decoding tests: zips built byte by byte (so every header field can lie),
small voice clips, and files encoded with ffmpeg."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_core.testing import synthetic_voice, wav_bytes

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_OF_DIRECTORY = struct.Struct("<IHHHHIIH")
_DOS_DATE = 0x21  # 1980-01-01
_UTF8_FLAG = 0x800
UNIX = 3  # `create_system` of an entry made on Unix

FFMPEG_MISSING = shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None
FFMPEG_MISSING_REASON = "ffmpeg/ffprobe not installed: lossy formats cannot be encoded or decoded"


@dataclass
class RawEntry:
    """One zip entry. By default every field is honest; set an override to make it lie."""

    name: str | bytes
    content: bytes = b""  # uncompressed bytes
    deflate: bool = True
    flags: int = 0  # extra general-purpose flag bits, written to both headers
    method: int | None = None  # method id written to the headers (default: the real one)
    crc: int | None = None
    file_size: int | None = None  # declared uncompressed size
    keep_compressed_bytes: int | None = None  # cut the stored data (and its declared size) to this
    external_attr: int = 0o100644 << 16
    local_name: bytes | None = None  # a different name in the local header


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A zip written field by field, so tests can make any header disagree with the data."""
    out = io.BytesIO()
    directory = io.BytesIO()
    for entry in entries:
        name = entry.name if isinstance(entry.name, bytes) else entry.name.encode("utf-8")
        flags = entry.flags
        if isinstance(entry.name, str) and not entry.name.isascii():
            flags |= _UTF8_FLAG
        data = deflate_raw(entry.content) if entry.deflate else entry.content
        if entry.keep_compressed_bytes is not None:
            data = data[: entry.keep_compressed_bytes]
        method = entry.method if entry.method is not None else (8 if entry.deflate else 0)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.content)
        size = entry.file_size if entry.file_size is not None else len(entry.content)
        offset = out.tell()
        local_name = entry.local_name if entry.local_name is not None else name
        # signature, version needed, flags, method, time, date, crc, sizes, name and extra lengths
        local = (0x04034B50, 20, flags, method, 0, _DOS_DATE, crc, len(data), size, len(local_name), 0)
        out.write(_LOCAL_HEADER.pack(*local) + local_name + data)
        # "version made by", the local fields from "version needed" to the sizes, the name length, then
        # extra and comment lengths, disk number, internal and external attributes, local header offset
        made_by = (UNIX << 8) | 20
        central = (0x02014B50, made_by, *local[1:9], len(name), 0, 0, 0, 0, entry.external_attr, offset)
        directory.write(_CENTRAL_HEADER.pack(*central))
        directory.write(name)
    directory_offset = out.tell()
    out.write(directory.getvalue())
    out.write(
        _END_OF_DIRECTORY.pack(
            0x06054B50, 0, 0, len(entries), len(entries), len(directory.getvalue()), directory_offset, 0
        )
    )
    return out.getvalue()


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An ordinary, valid zip made by zipfile."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def voice_wav(seconds: float = 0.2, sample_rate: int = 16000, *, seed: int = 0) -> bytes:
    """A short PCM16 mono voice clip."""
    return wav_bytes(synthetic_voice(seconds, sample_rate, seed=seed), sample_rate, subtype="PCM_16")


def voice_samples(seconds: float, sample_rate: int, channels: int = 1, *, seed: int = 0) -> np.ndarray:
    """(frames, channels) float32 voice; channels differ slightly so a downmix would be noticed."""
    mono = synthetic_voice(seconds, sample_rate, seed=seed)
    return np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def encode_with_ffmpeg(source_wav: Path, target: Path, codec_args: list[str]) -> Path:
    """Encodes `source_wav` to `target` (format chosen by its extension) with the given codec options."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source_wav), *codec_args, str(target)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return target
