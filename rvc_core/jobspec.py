"""What a job is, with nothing heavy to import: its spec, environment and progress.

The service's api role builds and validates specs from upload metadata without numpy or torch,
so these types live apart from `rvc_core.job`, which runs jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rvc_core.config import PrepareConfig
from rvc_core.errors import ConfigError
from rvc_core.names import is_model_name
from rvc_core.names import sanitise_model_name as sanitise_model_name  # its home before rvc_core.names
from rvc_core.spec import PRESETS
from rvc_core.train.config import EXPORT_CHOICES


@dataclass(frozen=True)
class JobSpec:
    model_name: str
    epochs: int = 200
    sample_rate: int = 40000  # Hz
    version: str = "v2"
    f0_method: str = "rmvpe"
    segment_seconds: float = 3.7
    batch_size: int | None = None  # None: chosen from free GPU memory (4 on CPU)
    save_every: int | None = None  # also export <name>_e<epoch>.pth every N epochs
    author: str | None = None
    preset: str = "full"  # "tiny": same architecture, small widths (CPU tests, demo)
    seed: int = 1234
    export: str = "best"  # "best" (by validation loss) or "final"
    # Continue training: start from the latest success of this model instead of RVC's pretrained
    # weights. The service resolves it at intake to that job's checkpoint pair (G_<n>.pth, D_<n>.pth)
    # and records their locations here; the worker downloads them into `JobEnvironment.base_g/_d`.
    base_model: str | None = None
    base_g: str | None = None  # URI of the base model's G_<n>.pth (resolved at intake)
    base_d: str | None = None  # URI of the base model's D_<n>.pth

    def __post_init__(self) -> None:
        if not is_model_name(self.model_name):
            raise ConfigError(f"model_name must match [A-Za-z0-9_-]{{1,64}}, got {self.model_name!r}")
        if not 1 <= self.epochs <= 10_000:
            raise ConfigError(f"epochs must be between 1 and 10000, got {self.epochs}")
        if self.batch_size is not None and not 1 <= self.batch_size <= 256:
            raise ConfigError(f"batch_size must be between 1 and 256, got {self.batch_size}")
        if self.save_every is not None and self.save_every < 1:
            raise ConfigError(f"save_every must be at least 1, got {self.save_every}")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be full or tiny, got {self.preset!r}")
        if self.export not in EXPORT_CHOICES:
            raise ConfigError(f"export must be best or final, got {self.export!r}")
        if self.base_model is not None and not is_model_name(self.base_model):
            raise ConfigError(f"base_model must match [A-Za-z0-9_-]{{1,64}}, got {self.base_model!r}")
        self.prepare_config()  # validates rate, version, f0 method, segment length

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(
            sample_rate=self.sample_rate,
            version=self.version,
            f0_method=self.f0_method,
            segment_seconds=self.segment_seconds,
        )


# `--compile` / TRAIN_COMPILE -> `JobEnvironment.compile`.
COMPILE_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


@dataclass(frozen=True)
class JobEnvironment:
    assets: str | None = None  # a folder, or "none" for random networks; None: $RVC_ASSETS
    pretrained: str | None = None  # a folder with pretrained_v2/f0G40k.pth …, or "none"
    device: str = "cpu"
    workers: int | None = None  # preprocessing processes
    tensorboard: str | None = None  # folder for TensorBoard scalars
    # Local G_<n>.pth / D_<n>.pth to start from instead of `pretrained` (continue training);
    # read only when training starts (a resumed run has its own checkpoint).
    base_g: str | None = None
    base_d: str | None = None
    # torch.compile the networks: None = where it wins (`rvc_core.train.compiled.compile_wins`).
    # Not part of the job's identity: a run may resume compiled or not.
    compile: bool | None = None
    # Autocast precision: "auto" (bf16/fp16 on a GPU, fp32 on CPU), "fp32", "bf16" or "fp16".
    precision: str = "auto"
    # The longest dataset to prepare, in seconds of audio (the job's scratch budget); None: any.
    max_audio_seconds: float | None = None


@dataclass
class JobProgress:
    status: str  # "paused" | "finished"
    stage: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset_report: dict[str, Any] | None = None
    # Seconds this call spent per stage (extract … zip), so the caller can log its overrun.
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = {k: str(v) for k, v in self.artifacts.items()}
        return d
