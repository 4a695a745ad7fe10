"""Factories for tests, benchmarks and the demo: synthetic voices and dataset zips in one line.

Nothing here is downloaded; every signal is generated from a seed.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf


def harmonic_tone(
    f0: float,
    seconds: float,
    sample_rate: int = 16000,
    *,
    vibrato_hz: float = 0.0,
    vibrato_cents: float = 0.0,
    harmonics: int = 8,
    amplitude: float = 0.5,
) -> np.ndarray:
    """A voiced-like tone: `harmonics` partials with 1/k amplitudes, optional sinusoidal vibrato."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    inst_f0 = f0 * 2.0 ** (vibrato_cents / 1200.0 * np.sin(2 * np.pi * vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(inst_f0) / sample_rate
    y = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        partial = np.where(inst_f0 * k < sample_rate / 2, np.sin(k * phase) / k, 0.0)
        y += partial
    y *= amplitude / max(np.max(np.abs(y)), 1e-9)
    return y.astype(np.float32)


def synthetic_voice(
    seconds: float,
    sample_rate: int = 40000,
    *,
    seed: int = 0,
    base_f0: float = 160.0,
    phrase_seconds: float = 4.0,
    pause_seconds: float = 0.6,
) -> np.ndarray:
    """Speech-like audio: voiced phrases with gliding pitch and a little breath noise, separated by
    near-silent pauses, so the silence slicer has real work to do."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total = round(seconds * sample_rate)
    produced = 0
    while produced < total:
        phrase = min(phrase_seconds * rng.uniform(0.6, 1.2), (total - produced) / sample_rate)
        n = round(phrase * sample_rate)
        if n <= 0:
            break
        t = np.arange(n) / sample_rate
        glide = base_f0 * rng.uniform(0.8, 1.25) * 2.0 ** (rng.uniform(-4, 4) / 12 * t / max(phrase, 1e-3))
        f0 = glide * 2.0 ** (30 / 1200 * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        y = sum(np.sin(k * phase) / k for k in range(1, 10) if base_f0 * 1.5 * k < sample_rate / 2)
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
        y = 0.3 * y * envelope + 0.003 * rng.standard_normal(n)
        out.append(y)
        produced += n
        gap = min(int(pause_seconds * sample_rate), total - produced)
        if gap > 0:
            out.append(0.0005 * rng.standard_normal(gap))
            produced += gap
    return np.concatenate(out)[:total].astype(np.float32)


def wav_bytes(
    samples: np.ndarray, sample_rate: int, *, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@dataclass
class DatasetFile:
    """One entry of a generated dataset zip."""

    name: str  # path inside the zip
    seconds: float = 5.0
    sample_rate: int = 44100  # Hz
    channels: int = 1
    fmt: str = "WAV"  # a soundfile format: WAV, FLAC, OGG
    subtype: str | None = None  # e.g. PCM_16, PCM_24, FLOAT
    seed: int = 0
    base_f0: float = 160.0


@dataclass
class DatasetSpec:
    files: list[DatasetFile] = field(default_factory=list)
    extra: dict[str, bytes] = field(default_factory=dict)  # non-audio entries, by name


def build_dataset_zip(path: Path, spec: DatasetSpec) -> Path:
    """Writes a zip of generated audio described by `spec` and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in spec.files:
            mono = synthetic_voice(f.seconds, f.sample_rate, seed=f.seed, base_f0=f.base_f0)
            samples = (
                mono if f.channels == 1 else np.stack([mono * (1 - 0.1 * c) for c in range(f.channels)], 1)
            )
            zf.writestr(f.name, wav_bytes(samples, f.sample_rate, fmt=f.fmt, subtype=f.subtype))
        for name, data in spec.extra.items():
            zf.writestr(name, data)
    return path


def simple_dataset_zip(path: Path, *, files: int = 3, seconds: float = 8.0, seed: int = 0) -> Path:
    """A one-speaker dataset of `files` wav files of `seconds` each."""
    spec = DatasetSpec(
        [DatasetFile(f"voice_{i:02d}.wav", seconds=seconds, seed=seed + i) for i in range(files)]
    )
    return build_dataset_zip(path, spec)


def iter_names(spec: DatasetSpec) -> Iterable[str]:
    yield from (f.name for f in spec.files)
    yield from spec.extra
