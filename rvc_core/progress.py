"""Progress reporting: typed events for callers (the service forwards them) and tqdm bars locally."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # extract, preprocess, pitch, features, train, index, export, preview
    message: str = ""
    total: int | None = None  # items in this stage, when known
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    learning_rate: float | None = None
    eta_seconds: float | None = None
    seconds_per_epoch: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


ProgressCallback = Callable[[ProgressEvent], None]


def progress_bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr that hides itself when stderr is not a terminal (Cloud Run, CI)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)
