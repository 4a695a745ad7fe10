"""Decoding user audio at its native rate and channel count; our own float32 WAV files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_core.audio_io import (
    DecodedAudio,
    probe_and_decode,
    probe_seconds,
    read_wav_float32,
    write_wav_float32,
)
from rvc_core.errors import UndecodableAudio
from tests.factories_intake import FFMPEG_MISSING, FFMPEG_MISSING_REASON, encode_with_ffmpeg, voice_samples

SECONDS = 0.5
needs_ffmpeg = pytest.mark.skipif(FFMPEG_MISSING, reason=FFMPEG_MISSING_REASON)


def write_clip(
    path: Path, sample_rate: int, channels: int, *, fmt: str = "WAV", subtype: str = "PCM_16"
) -> np.ndarray:
    samples = voice_samples(SECONDS, sample_rate, channels)
    sf.write(path, samples, sample_rate, format=fmt, subtype=subtype)
    return samples


def lossy_clip(tmp_path: Path, name: str, sample_rate: int, channels: int, codec: list[str]) -> Path:
    source = tmp_path / "source.wav"
    write_clip(source, sample_rate, channels, subtype="FLOAT")
    return encode_with_ffmpeg(source, tmp_path / name, codec)


@pytest.mark.parametrize(
    ("name", "sample_rate", "channels", "fmt", "subtype", "tolerance"),
    [
        ("pcm16.wav", 8000, 1, "WAV", "PCM_16", 1 / 32768),
        ("pcm24_stereo.wav", 44100, 2, "WAV", "PCM_24", 1 / 2**23),
        ("float.wav", 96000, 1, "WAV", "FLOAT", 0.0),
        ("lossless.flac", 22050, 2, "FLAC", "PCM_16", 1 / 32768),
        ("aiff.aiff", 16000, 1, "AIFF", "PCM_16", 1 / 32768),
    ],
)
def test_lossless_file_decodes_to_its_samples(
    tmp_path: Path, name: str, sample_rate: int, channels: int, fmt: str, subtype: str, tolerance: float
) -> None:
    original = write_clip(tmp_path / name, sample_rate, channels, fmt=fmt, subtype=subtype)

    audio = probe_and_decode(tmp_path / name)

    assert audio.samples.dtype == np.float32
    assert (audio.sample_rate, audio.channels, audio.frames) == (sample_rate, channels, len(original))
    np.testing.assert_allclose(audio.samples, original, atol=tolerance)


def test_ogg_vorbis_decodes_at_its_rate_and_length(tmp_path: Path) -> None:
    write_clip(tmp_path / "clip.ogg", 32000, 2, fmt="OGG", subtype="VORBIS")

    audio = probe_and_decode(tmp_path / "clip.ogg")

    assert (audio.sample_rate, audio.channels) == (32000, 2)
    assert audio.seconds == pytest.approx(SECONDS, abs=0.02)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("name", "sample_rate", "channels", "codec", "expected_rate"),
    [
        ("clip.mp3", 44100, 2, ["-c:a", "libmp3lame", "-b:a", "128k"], 44100),
        ("clip_8k.mp3", 8000, 1, ["-c:a", "libmp3lame"], 8000),
        ("clip.m4a", 48000, 1, ["-c:a", "aac"], 48000),
        ("clip_96k.m4a", 96000, 2, ["-c:a", "aac"], 96000),
        ("clip.opus", 48000, 1, ["-c:a", "libopus"], 48000),
        ("clip.mp4", 24000, 1, ["-c:a", "aac"], 24000),
    ],
)
def test_lossy_file_decodes_through_ffmpeg_at_its_native_rate(
    tmp_path: Path, name: str, sample_rate: int, channels: int, codec: list[str], expected_rate: int
) -> None:
    path = lossy_clip(tmp_path, name, sample_rate, channels, codec)

    audio = probe_and_decode(path)

    assert audio.samples.dtype == np.float32
    assert (audio.sample_rate, audio.channels) == (expected_rate, channels)
    assert audio.seconds == pytest.approx(SECONDS, abs=0.06)


@needs_ffmpeg
def test_lossy_decode_keeps_the_signal(tmp_path: Path) -> None:
    path = lossy_clip(tmp_path, "clip.m4a", 44100, 1, ["-c:a", "aac", "-b:a", "192k"])
    original = voice_samples(SECONDS, 44100, 1)[:, 0]

    decoded = probe_and_decode(path).samples[:, 0]

    n = min(len(original), len(decoded))
    assert np.corrcoef(original[:n], decoded[:n])[0, 1] > 0.9


@needs_ffmpeg
def test_mp3_misnamed_as_wav_falls_back_to_ffmpeg(tmp_path: Path) -> None:
    mp3 = lossy_clip(tmp_path, "clip.mp3", 22050, 1, ["-c:a", "libmp3lame"])
    misnamed = mp3.rename(tmp_path / "clip.wav")

    audio = probe_and_decode(misnamed)

    assert audio.sample_rate == 22050
    assert audio.seconds == pytest.approx(SECONDS, abs=0.06)


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp3", "noise.flac"])
def test_garbage_file_is_undecodable(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(8192))

    with pytest.raises(UndecodableAudio) as raised:
        probe_and_decode(path)

    assert raised.value.code == "undecodable_audio"
    assert name in raised.value.message


def test_wav_without_samples_is_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)

    with pytest.raises(UndecodableAudio, match="no audio"):
        probe_and_decode(path)


@needs_ffmpeg
def test_video_without_an_audio_stream_is_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "silent_film.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=16x16:d=0.2",
         "-c:v", "mpeg4", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    with pytest.raises(UndecodableAudio, match="no audio stream"):
        probe_and_decode(path)


@needs_ffmpeg
def test_missing_ffmpeg_says_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lossy_clip(tmp_path, "clip.mp3", 16000, 1, ["-c:a", "libmp3lame"])
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))

    with pytest.raises(UndecodableAudio, match="install ffmpeg"):
        probe_and_decode(path)


def test_lossless_formats_need_no_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_clip(tmp_path / "clip.flac", 16000, 1, fmt="FLAC")
    monkeypatch.setenv("PATH", str(tmp_path))

    assert probe_and_decode(tmp_path / "clip.flac").sample_rate == 16000


def test_decoded_audio_reports_channels_and_seconds() -> None:
    audio = DecodedAudio(samples=np.zeros((24000, 2), dtype=np.float32), sample_rate=48000)

    assert (audio.channels, audio.seconds) == (2, 0.5)


# --- our own float32 WAV files --------------------------------------------------------------------
def test_float32_wav_round_trips_exactly(tmp_path: Path) -> None:
    samples = np.random.default_rng(0).uniform(-1.5, 1.5, 4000).astype(np.float32)  # beyond full scale too

    write_wav_float32(tmp_path / "seg.wav", samples, 40000)
    restored, sample_rate = read_wav_float32(tmp_path / "seg.wav")

    assert sample_rate == 40000
    assert restored.dtype == np.float32 and restored.ndim == 1
    np.testing.assert_array_equal(restored, samples)


def test_written_wav_is_a_mono_float_wav(tmp_path: Path) -> None:
    write_wav_float32(tmp_path / "seg.wav", np.zeros((100, 1), dtype=np.float32), 16000)

    info = sf.info(tmp_path / "seg.wav")

    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "FLOAT", 1, 16000)


def test_writing_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_wav_float32(tmp_path / "seg.wav", np.zeros(100, dtype=np.float32), 16000)
    write_wav_float32(tmp_path / "seg.wav", np.ones(50, dtype=np.float32) * 0.5, 16000)

    assert [p.name for p in tmp_path.iterdir()] == ["seg.wav"]
    assert len(read_wav_float32(tmp_path / "seg.wav")[0]) == 50


def test_writing_stereo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mono"):
        write_wav_float32(tmp_path / "seg.wav", np.zeros((100, 2), dtype=np.float32), 16000)

    assert not (tmp_path / "seg.wav").exists()


def test_reading_a_stereo_file_is_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "stereo.wav", np.zeros((100, 2), dtype=np.float32), 16000, subtype="FLOAT")

    with pytest.raises(ValueError, match="mono"):
        read_wav_float32(tmp_path / "stereo.wav")


def test_importing_the_modules_loads_no_heavy_library() -> None:
    code = (
        "import sys, rvc_core.audio_io, rvc_core.intake; "
        "heavy = {'torch', 'librosa', 'scipy', 'faiss'} & set(sys.modules); "
        "assert not heavy, heavy"
    )

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the length from the header, before decoding (the dataset's length limit) ---------------------
@pytest.mark.parametrize(
    ("name", "fmt", "subtype"),
    [("clip.wav", "WAV", "PCM_16"), ("clip.flac", "FLAC", "PCM_24"), ("clip.ogg", "OGG", "VORBIS")],
)
def test_probe_reads_the_length_without_decoding(tmp_path: Path, name: str, fmt: str, subtype: str) -> None:
    samples = write_clip(tmp_path / name, 22050, 2, fmt=fmt, subtype=subtype)

    assert probe_seconds(tmp_path / name) == pytest.approx(len(samples) / 22050, abs=0.01)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("name", "codec"),
    [("clip.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]), ("clip.m4a", ["-c:a", "aac"])],
)
def test_probe_reads_a_compressed_file_through_ffprobe(tmp_path: Path, name: str, codec: list[str]) -> None:
    path = lossy_clip(tmp_path, name, 44100, 1, codec)

    # Encoders pad a few milliseconds; the decoder's own length is the reference.
    assert probe_seconds(path) == pytest.approx(probe_and_decode(path).seconds, abs=0.06)


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp3"])
def test_probe_of_a_file_that_is_not_audio_is_unknown(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"these bytes are not audio " * 40)

    assert probe_seconds(tmp_path / name) is None


@needs_ffmpeg
def test_decoding_stops_at_max_seconds_whatever_the_header_says(tmp_path: Path) -> None:
    mp3 = lossy_clip(tmp_path, "clip.mp3", 44100, 1, ["-c:a", "libmp3lame"])
    wav = tmp_path / "clip.wav"
    write_clip(wav, 16000, 2)

    assert probe_and_decode(mp3, max_seconds=0.2).seconds == pytest.approx(0.2, abs=0.03)
    capped = probe_and_decode(wav, max_seconds=0.2)
    assert (capped.frames, capped.channels) == (3200, 2)
    assert probe_and_decode(wav, max_seconds=60).frames == round(SECONDS * 16000)
