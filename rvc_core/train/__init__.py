"""Training an RVC model from a prepared work dir: `train(workdir, TrainConfig(...), ckpt_dir=, device=)`.

Importing this package is cheap; torch is imported when `train` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rvc_core.train.config import TrainConfig
from rvc_core.train.results import BatchSizeReduction, EpochSummary, TrainResult

if TYPE_CHECKING:
    from rvc_core.train.loop import train

__all__ = ["BatchSizeReduction", "EpochSummary", "TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from rvc_core.train.loop import train

        return train
    raise AttributeError(name)
