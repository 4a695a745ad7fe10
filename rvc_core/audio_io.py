"""Decoding user audio into float32 samples, and reading/writing our own float32 WAV files.

`probe_and_decode` only decodes: the samples keep the file's own sample rate and channel count.
libsndfile (via soundfile) reads the lossless formats; ffmpeg reads the lossy and container formats
and anything libsndfile refuses.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from rvc_core.atomic import atomic_file
from rvc_core.errors import UndecodableAudio

# libsndfile builds differ in MP3/Opus/AAC support and gapless handling; ffmpeg decodes these
# the same way everywhere, so they skip soundfile entirely.
FFMPEG_FIRST_EXTENSIONS: frozenset[str] = frozenset(
    {".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm", ".mka"}
)

# ffmpeg decodes far faster than real time; the timeout only catches a hung process.
FFMPEG_BASE_TIMEOUT_S = 30.0  # seconds, for any file
FFMPEG_TIMEOUT_PER_MIB_S = 2.0  # seconds per MiB of input
FFMPEG_MAX_TIMEOUT_S = 600.0  # seconds, the bound for very large files

_MIB = 1 << 20


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, shape (frames, channels)
    sample_rate: int  # Hz

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe_and_decode(path: Path, max_seconds: float | None = None) -> DecodedAudio:
    """Decodes any audio file to float32 `(frames, channels)` at its native rate, at most its first
    `max_seconds` (a compressed file whose header understates its length stays bounded in memory).

    Raises `UndecodableAudio` when no decoder can read it, when it holds no samples, or when it
    needs ffmpeg and ffmpeg is not installed.
    """
    path = Path(path)
    soundfile_error: str | None = None
    if path.suffix.lower() not in FFMPEG_FIRST_EXTENSIONS:
        try:
            audio = _decode_with_soundfile(path, max_seconds)
        except (sf.LibsndfileError, RuntimeError) as exc:
            soundfile_error = str(exc)
        else:
            return _require_samples(audio, path)
    return _require_samples(_decode_with_ffmpeg(path, soundfile_error, max_seconds), path)


def probe_seconds(path: Path) -> float | None:
    """The file's duration in seconds from its header, without decoding it; None when unknown
    (an unreadable file, or a stream that does not state its length). MP3s without a VBR header
    are estimated from their bitrate by ffprobe, so the figure is a guide, not a bound."""
    path = Path(path)
    seconds = libsndfile_seconds(path)
    if seconds is not None:
        return seconds
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    command = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path.resolve())]
    try:
        result = _run(command, _ffmpeg_timeout(path), path)
        seconds = float(json.loads(result.stdout.decode("utf-8", "replace"))["format"]["duration"])
    except (UndecodableAudio, ValueError, KeyError, TypeError):
        return None
    return seconds if 0 < seconds < float("inf") else None


def libsndfile_seconds(path: Path) -> float | None:
    """The duration in seconds libsndfile reads from the header of a file `probe_and_decode` gives
    to libsndfile; None for the formats ffmpeg decodes, an unreadable file or an unknown length."""
    if Path(path).suffix.lower() in FFMPEG_FIRST_EXTENSIONS:
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    # libsndfile states an unknown length as a huge frame count.
    return info.frames / info.samplerate if 0 < info.frames < 1 << 62 and info.samplerate > 0 else None


def write_wav_float32(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Atomically writes mono samples (1-D, or 2-D with one channel) as a float32 WAV."""
    mono = np.asarray(samples, dtype=np.float32)
    if mono.ndim == 2 and mono.shape[1] == 1:
        mono = mono[:, 0]
    if mono.ndim != 1:
        raise ValueError(f"write_wav_float32 writes mono audio; got samples of shape {mono.shape}")
    # Through a Python file object, written atomically: libsndfile's close on a path calls fsync,
    # which cost more than all the signal processing of a segment (about 3 ms per file), and an
    # in-memory buffer costs two more copies of the samples.
    with atomic_file(Path(path)) as out:
        sf.write(out, mono, sample_rate, format="WAV", subtype="FLOAT")


def read_wav_float32(path: Path) -> tuple[np.ndarray, int]:
    """Reads a mono WAV written by `write_wav_float32`: (float32 1-D samples, sample rate in Hz)."""
    samples, sample_rate = sf.read(Path(path), dtype="float32", always_2d=True)
    if samples.shape[1] != 1:
        raise ValueError(f"{path} has {samples.shape[1]} channels; expected a mono file")
    return samples[:, 0], int(sample_rate)


def _decode_with_soundfile(path: Path, max_seconds: float | None = None) -> DecodedAudio:
    with sf.SoundFile(path) as f:
        frames = -1 if max_seconds is None else math.ceil(max_seconds * f.samplerate)
        samples, sample_rate = f.read(frames, dtype="float32", always_2d=True), f.samplerate
    return DecodedAudio(samples=samples, sample_rate=int(sample_rate))


def _require_samples(audio: DecodedAudio, path: Path) -> DecodedAudio:
    if audio.frames == 0:
        raise UndecodableAudio(f"{path.name}: the file decodes to no audio (zero samples)")
    return audio


def _ffmpeg_timeout(path: Path) -> float:
    size_mib = path.stat().st_size / _MIB
    return min(FFMPEG_BASE_TIMEOUT_S + FFMPEG_TIMEOUT_PER_MIB_S * size_mib, FFMPEG_MAX_TIMEOUT_S)


def _decode_with_ffmpeg(
    path: Path, soundfile_error: str | None, max_seconds: float | None = None
) -> DecodedAudio:
    tried = f" (soundfile: {soundfile_error})" if soundfile_error else ""
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    # An absolute path can never be mistaken for an option or a protocol ("x:" prefix) by ffmpeg.
    source = str(path.resolve())
    if ffmpeg is None or ffprobe is None:
        raise UndecodableAudio(
            f"{path.name}: decoding this file needs ffmpeg, which is not installed; install ffmpeg "
            f"(it provides ffmpeg and ffprobe){tried}"
        )
    timeout = _ffmpeg_timeout(path)
    sample_rate, channels = _probe_stream(ffprobe, source, path, timeout, tried)
    # -ar/-ac repeat the native values: no resampling, but a fixed layout even if the stream changes.
    command = [
        ffmpeg, "-nostdin", "-v", "error", "-i", source, "-map", "0:a:0", "-vn",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(sample_rate), "-ac", str(channels),
    ]  # fmt: skip
    if max_seconds is not None:
        command += ["-t", f"{max_seconds:.3f}"]
    command.append("pipe:1")
    result = _run(command, timeout, path)
    if result.returncode != 0:
        raise UndecodableAudio(f"{path.name}: ffmpeg could not decode it: {_last_line(result.stderr)}{tried}")
    usable = len(result.stdout) - len(result.stdout) % (4 * channels)
    # astype copies: frombuffer's view of the bytes would be read-only.
    samples = np.frombuffer(result.stdout[:usable], dtype="<f4").astype(np.float32).reshape(-1, channels)
    return DecodedAudio(samples=samples, sample_rate=sample_rate)


def _probe_stream(ffprobe: str, source: str, path: Path, timeout: float, tried: str) -> tuple[int, int]:
    """The first audio stream's native (sample rate in Hz, channel count)."""
    command = [
        ffprobe, "-v", "error", "-select_streams", "a:0",
        "-show_entries", "stream=sample_rate,channels", "-of", "json", source,
    ]  # fmt: skip
    result = _run(command, timeout, path)
    if result.returncode != 0:
        raise UndecodableAudio(f"{path.name}: not a readable audio file: {_last_line(result.stderr)}{tried}")
    try:
        streams = json.loads(result.stdout.decode("utf-8", "replace")).get("streams", [])
        stream = streams[0]
        sample_rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UndecodableAudio(f"{path.name}: the file contains no audio stream{tried}") from None
    if sample_rate <= 0 or channels <= 0:
        raise UndecodableAudio(
            f"{path.name}: the audio stream reports {sample_rate} Hz and {channels} channels{tried}"
        )
    return sample_rate, channels


def _run(command: list[str], timeout: float, path: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UndecodableAudio(f"{path.name}: decoding took longer than {timeout:.0f} s") from None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"
