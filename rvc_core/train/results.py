"""What `train` returns: the run's outcome, its per-epoch history and its batch-size reductions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class BatchSizeReduction:
    unix_time: float  # seconds since the epoch (time.time()) when the step ran out of memory
    epoch: int  # the epoch it happened in (1-based)
    step: int  # steps completed before it
    old: int
    new: int
    phase: str = "train"  # "train" (a training step) or "validation" (the epoch-end validation loss)


@dataclass(frozen=True)
class EpochSummary:
    epoch: int  # 1-based
    losses: dict[str, float]  # means over the epoch's applied steps, by `step.LOSS_NAMES`
    validation_mel: float  # mel L1 on the held-out segments after this epoch
    learning_rate: float  # the rate used during this epoch
    steps: int  # steps applied (finite) in this epoch
    seconds: float  # wall time of the epoch, validation included (0 for an epoch split by a pause)
    # Optimiser steps skipped in this epoch by network and kind (`precision.SKIP_COUNTER_NAMES`:
    # g_/d_ + nonfinite_loss, nonfinite_grad (bf16/fp32), scaler_overflow (fp16)).
    skips: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    status: Literal["paused", "finished"]
    stop_reason: str  # "finished", "deadline" or "should_stop"
    epoch: int  # epochs completed
    epochs: int  # epochs asked for
    step: int  # steps taken in total (skipped ones included)
    best_epoch: int | None
    best_validation_mel: float | None
    history: tuple[EpochSummary, ...]
    batch_size: int  # the batch size in use at the end
    batch_size_reductions: tuple[BatchSizeReduction, ...]
    skipped_steps: int  # steps that failed: a non-finite loss or non-finite gradients (see `skips`)
    precision: str  # bf16, fp16 or fp32
    checkpoint: Path
    generator_weights: Path | None  # set when finished: the `export` choice (best or final) for export
    train_segments: int
    validation_segments: int
    speakers: int  # highest speaker id + 1
    train_seconds: float  # seconds of audio trained on
    # Optimiser steps skipped over the whole run by network and kind, as in `EpochSummary.skips`.
    skips: dict[str, int] = field(default_factory=dict)
