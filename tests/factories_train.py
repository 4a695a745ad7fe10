"""A fake prepared work dir for training tests: tone segments, their true pitch, random features.

Everything is generated from a seed; the layout and formats are those of `rvc_core.layout` and of
`prepare`'s `segments.json` (`{"files": [{"name", "segments": [{id, speaker_id, source_id,
start_seconds, seconds}]}]}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_core.atomic import write_json, write_npy
from rvc_core.audio_io import write_wav_float32
from rvc_core.layout import WorkDir
from rvc_core.pitch import coarse_pitch
from rvc_core.spec import FEATURE_DIMS, FEATURE_HOP, FEATURE_SAMPLE_RATE, FEATURE_WINDOW, PITCH_HOP
from rvc_core.testing import harmonic_tone


@dataclass(frozen=True)
class FakeWorkDir:
    root: Path
    segment_ids: tuple[str, ...]
    sample_rate: int  # Hz
    version: str


def make_prepared_workdir(
    root: Path,
    *,
    segments: int = 6,
    seconds: float = 0.8,
    sample_rate: int = 32000,
    version: str = "v2",
    speakers: int = 1,
    seed: int = 0,
) -> FakeWorkDir:
    """`segments` tone segments of `seconds` each (pitch 110–330 Hz), spread over `speakers` speakers."""
    wd = WorkDir(Path(root))
    rng = np.random.default_rng(seed)
    dim = FEATURE_DIMS[version]
    files: list[dict[str, object]] = []
    ids: list[str] = []
    for i in range(segments):
        seg_id = f"s{i:03d}"
        speaker = i % speakers
        f0 = float(rng.uniform(110.0, 330.0))
        n16k = round(seconds * FEATURE_SAMPLE_RATE)
        write_wav_float32(wd.wav_dir / f"{seg_id}.wav", harmonic_tone(f0, seconds, sample_rate), sample_rate)
        write_wav_float32(
            wd.wav16k_dir / f"{seg_id}.wav",
            harmonic_tone(f0, seconds, FEATURE_SAMPLE_RATE),
            FEATURE_SAMPLE_RATE,
        )
        pitch_hz = np.full(n16k // PITCH_HOP + 1, f0, dtype=np.float32)
        write_npy(wd.f0_dir / f"{seg_id}.npy", pitch_hz)
        write_npy(wd.coarse_dir / f"{seg_id}.npy", coarse_pitch(pitch_hz))
        n_features = (n16k - FEATURE_WINDOW) // FEATURE_HOP + 1
        write_npy(
            wd.features_dir / f"{seg_id}.npy", rng.standard_normal((n_features, dim)).astype(np.float32)
        )
        files.append(
            {
                "name": f"voice_{i:02d}.wav",
                "speaker_id": speaker,
                "segments": [
                    {
                        "id": seg_id,
                        "speaker_id": speaker,
                        "source_id": f"f{i:03d}",
                        "start_seconds": 0.0,
                        "seconds": seconds,
                    }
                ],
            }
        )
        ids.append(seg_id)
    write_json(wd.segments_listing, {"files": files})
    for stage in ("extract", "preprocess", "pitch", "features"):
        write_json(wd.stage_marker(stage), {"segments": segments})
    return FakeWorkDir(root=wd.root, segment_ids=tuple(ids), sample_rate=sample_rate, version=version)
