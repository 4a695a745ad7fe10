"""Training checkpoints: one file, written atomically, holding everything a resume needs.

`ckpt_dir/latest.pt` is a `torch.save`d dict of plain values and tensors (readable with
`weights_only=True`): both networks, both optimisers and schedulers, the loss scaler, the random
states of python, numpy, torch and CUDA, the data order (the batches left in the current epoch),
the epoch and step, the training hash, the history, and the best validation loss with its
generator weights. It is replaced in one `os.replace`, so a crash never leaves half a file.

Beside it: `generator.pt`, the generator state dict chosen by `TrainConfig.export` (written when
training finishes; the input of export), and `generator_e<N>.pt` for every `save_every`-th epoch.
Both hold our module names (weight norm as `parametrizations.weight.original0/1`) in fp32: load
them into `build_generator(...)` and use `export_generator_weights` for RVC's layout.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_core.atomic import atomic_path
from rvc_core.errors import CheckpointCorrupt, ConfigMismatch
from rvc_core.layout import CHECKPOINT_NAME
from rvc_core.train.config import TrainConfig, differing_fields

if TYPE_CHECKING:
    import torch

GENERATOR_NAME = "generator.pt"
FORMAT_VERSION = 1


def checkpoint_path(ckpt_dir: Path) -> Path:
    return Path(ckpt_dir) / CHECKPOINT_NAME


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any]) -> float:
    """Writes `state` atomically; returns the seconds it took (the loop budgets for the next one)."""
    import torch

    started = time.monotonic()
    with atomic_path(checkpoint_path(ckpt_dir)) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)
    return time.monotonic() - started


def load_checkpoint(ckpt_dir: Path, device: str) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint yet."""
    import torch

    path = checkpoint_path(ckpt_dir)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # any unreadable file: truncated, foreign, another torch format
        raise CheckpointCorrupt(f"cannot read the checkpoint {path}: {err}", stage="train") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointCorrupt(
            f"{path} is not a checkpoint of this trainer (format {FORMAT_VERSION})", stage="train"
        )
    return state


def check_resumable(state: dict[str, Any], config: TrainConfig, dataset_ids: list[str]) -> None:
    """Refuses a resume whose training hash or dataset differs from the checkpoint's."""
    if state["training_hash"] != config.training_hash():
        diffs = differing_fields(state["hashed_fields"], config.hashed_fields())
        raise ConfigMismatch(
            f"the checkpoint was trained with another configuration ({'; '.join(diffs)}); "
            "resume with the original options or use a new checkpoint folder",
            stage="train",
        )
    if state["dataset_ids"] != dataset_ids:
        saved, now = set(state["dataset_ids"]), set(dataset_ids)
        raise ConfigMismatch(
            f"the checkpoint was trained on another dataset ({len(saved - now)} segment(s) gone, "
            f"{len(now - saved)} new); use a new checkpoint folder",
            stage="train",
        )


def save_generator_weights(path: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A generator state dict on its own (the input of export), written atomically."""
    import torch

    with atomic_path(Path(path)) as tmp:
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, tmp)
    return Path(path)


def cpu_copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


def capture_rng_state() -> dict[str, Any]:
    import torch

    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"]).astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _as_tuple(value: Any) -> Any:
    """`random.setstate` wants tuples where a round trip may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
