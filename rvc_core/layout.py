"""The work-dir layout of `prepare` and `train` (documented in docs/workdir.md).

```
WORKDIR/
  manifest.json              config, its hash, library versions; a re-run with another config is refused
  report.json                the dataset report (written even when the dataset is rejected)
  extract/                   audio files from the zip, renamed to safe ids        (stage: extract)
  extract.json               those files and every ignored entry with its reason
  segments/wav/<seg>.wav     float32 segments at the target rate                  (stage: preprocess)
  segments/wav16k/<seg>.wav  float32 16 kHz copies
  segments.json              per-file statistics and every segment or dropped chunk
  pitch/coarse/<seg>.npy     int64 coarse pitch ids 1..255, 100 frames/s          (stage: pitch)
  pitch/f0/<seg>.npy         float32 fine pitch in Hz, 0 = unvoiced
  features/<seg>.npy         float32 content features, 50 frames/s (768 or 256-d) (stage: features)
  stages/<stage>.json        completion marker with the stage's summary
  checkpoints/latest.pt      the training checkpoint (rvc_core.train.checkpoint)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES: tuple[str, ...] = ("extract", "preprocess", "pitch", "features")
# `run_job`'s stages after training, in order (their outputs in `finish/`).
FINISH_STAGES: tuple[str, ...] = ("index", "export", "preview", "report", "zip", "checkpoints")
JOB_STAGES: tuple[str, ...] = (*STAGES, "train", *FINISH_STAGES)
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "latest.pt"


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def extract_dir(self) -> Path:
        return self.root / "extract"

    @property
    def extract_listing(self) -> Path:
        return self.root / "extract.json"

    @property
    def wav_dir(self) -> Path:
        return self.root / "segments" / "wav"

    @property
    def wav16k_dir(self) -> Path:
        return self.root / "segments" / "wav16k"

    @property
    def segments_listing(self) -> Path:
        return self.root / "segments.json"

    @property
    def coarse_dir(self) -> Path:
        return self.root / "pitch" / "coarse"

    @property
    def f0_dir(self) -> Path:
        return self.root / "pitch" / "f0"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    def stage_marker(self, stage: str) -> Path:
        return self.stages_dir / f"{stage}.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def training_checkpoint(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT_NAME

    def is_done(self, stage: str) -> bool:
        return self.stage_marker(stage).exists()
