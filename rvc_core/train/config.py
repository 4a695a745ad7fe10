"""`TrainConfig`: every training option, with its help text, and the hash that binds a checkpoint.

The hash covers the fields that change what training computes (the model, the data split, the
random streams, the optimiser). It leaves out:
- `epochs`: raising it on resume continues the same run for longer (Applio semantics);
- options that only change what is observed or saved (`log_every_steps`, `checkpoint_every_seconds`,
  `save_every`, `export`, `tensorboard_dir`, `progress_bar`, `max_nonfinite_steps`, `deterministic`);
- the folders of the pretrained files: only their file names count, because the same assets are
  mounted at different places on different machines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rvc_core.errors import ConfigError
from rvc_core.spec import PRESETS, SAMPLE_RATES, VERSIONS

EXPORT_CHOICES: tuple[str, ...] = ("best", "final")

# RVC.md §5: the optimiser and schedule every RVC model is trained with.
ADAMW_BETAS: tuple[float, float] = (0.8, 0.99)
ADAMW_EPS = 1e-9
LR_DECAY_PER_EPOCH = 0.999875
MEL_LOSS_WEIGHT = 45.0
KL_LOSS_WEIGHT = 1.0

UNHASHED_FIELDS: frozenset[str] = frozenset(
    {
        "epochs",
        "save_every",
        "export",
        "log_every_steps",
        "checkpoint_every_seconds",
        "max_nonfinite_steps",
        "tensorboard_dir",
        "compile",
        "precision",
        "progress_bar",
        "deterministic",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs besides the prepared work dir and where to keep checkpoints."""

    version: str = field(
        default="v2", metadata={"help": "RVC model version: v2 (768-d features) or v1 (256-d)"}
    )
    sample_rate: int = field(default=40000, metadata={"help": "sample rate in Hz: 32000, 40000 or 48000"})
    f0: bool = field(default=True, metadata={"help": "pitch-guided model (uses the prepared pitch)"})
    preset: str = field(
        default="full", metadata={"help": "network size: full (RVC's) or tiny (tests, demos)"}
    )
    epochs: int = field(default=200, metadata={"help": "total epochs; may be raised when resuming"})
    batch_size: int | None = field(
        default=None, metadata={"help": "items per step; empty = chosen from free GPU memory (4 on CPU)"}
    )
    seed: int = field(default=1234, metadata={"help": "seed of the validation split, data order and init"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of G and D"})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "share of segments held out for the validation loss (at least one)"}
    )
    save_every: int | None = field(
        default=None, metadata={"help": "also keep the generator weights of every N-th epoch"}
    )
    export: str = field(
        default="best", metadata={"help": "generator to hand to export: best (validation) or final epoch"}
    )
    log_every_steps: int = field(default=50, metadata={"help": "steps between progress events"})
    checkpoint_every_seconds: float = field(
        default=300.0, metadata={"help": "seconds between checkpoints inside a run"}
    )
    max_nonfinite_steps: int = field(
        default=20, metadata={"help": "consecutive non-finite-loss steps before training fails"}
    )
    pretrained_g: Path | None = field(
        default=None, metadata={"help": "pretrained generator (e.g. f0G40k.pth)"}
    )
    pretrained_d: Path | None = field(
        default=None, metadata={"help": "pretrained discriminator (e.g. f0D40k.pth)"}
    )
    tensorboard_dir: Path | None = field(default=None, metadata={"help": "write TensorBoard scalars here"})
    progress_bar: bool | None = field(
        default=None, metadata={"help": "tqdm bar on stderr; empty = only when stderr is a terminal"}
    )
    deterministic: bool = field(
        default=False, metadata={"help": "deterministic kernels (bit-identical resume; slower on GPU)"}
    )
    compile: bool | None = field(
        default=None,
        metadata={"help": "torch.compile the networks; empty = where it wins (see docs/performance.md)"},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "autocast precision: auto (bf16 or fp16 on a GPU, fp32 on CPU), fp32, bf16 (GPU, or "
            "CPU with native bf16: ~1/3 less time per step there) or fp16 (GPU)"
        },
    )

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.version in VERSIONS, f"version must be v2 or v1, got {self.version!r}"),
            (
                self.sample_rate in SAMPLE_RATES,
                f"sample_rate must be one of {SAMPLE_RATES}, got {self.sample_rate}",
            ),
            (self.preset in PRESETS, f"preset must be one of {PRESETS}, got {self.preset!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (
                self.batch_size is None or self.batch_size >= 1,
                f"batch_size must be >= 1, got {self.batch_size}",
            ),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (
                0.0 < self.validation_fraction < 1.0,
                f"validation_fraction must be between 0 and 1, got {self.validation_fraction}",
            ),
            (
                self.save_every is None or self.save_every >= 1,
                f"save_every must be >= 1, got {self.save_every}",
            ),
            (self.export in EXPORT_CHOICES, f"export must be best or final, got {self.export!r}"),
            (self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}"),
            (self.checkpoint_every_seconds > 0, "checkpoint_every_seconds must be positive"),
            (
                self.max_nonfinite_steps >= 1,
                f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message, stage="train")

    def hashed_fields(self) -> dict[str, Any]:
        """The fields that change results, as plain JSON values (paths reduced to file names)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in UNHASHED_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = value.name if isinstance(value, Path) else value
        return out

    def training_hash(self) -> str:
        payload = json.dumps(self.hashed_fields(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: saved -> current` for each hashed field that differs (for the ConfigMismatch message)."""
    names = sorted(set(saved) | set(current))
    return [f"{n}: {saved.get(n)!r} -> {current.get(n)!r}" for n in names if saved.get(n) != current.get(n)]
