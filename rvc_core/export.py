"""Export (RVC.md §1.1): the small `<name>.pth` that RVC WebUI and Applio load.

A dict of plain Python values and tensors, loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_core.atomic import atomic_path
from rvc_core.spec import ModelShape, sample_rate_label


@dataclass(frozen=True)
class ExportInfo:
    model_name: str
    version: str  # "v2" | "v1"
    f0: bool
    epoch: int
    step: int
    author: str | None = None
    dataset_seconds: float = 0.0
    speakers: int = 1


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def model_hash(weights: dict[str, Any]) -> str:
    """A content hash of the weights (names, shapes and bytes), as Applio shows in its info panel."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_export(weights: dict[str, Any], shape: ModelShape, info: ExportInfo) -> dict[str, Any]:
    """`weights` must already be the legacy-named fp16 generator weights without `enc_q.*`."""
    assert not any("enc_q" in k for k in weights), "enc_q must not be exported"
    return {
        "weight": weights,
        "config": shape.as_config_list(),
        "info": f"{info.epoch}epoch",
        "sr": sample_rate_label(shape.sampling_rate),
        "f0": 1 if info.f0 else 0,
        "version": info.version,
        # Applio's metadata keys: harmless to RVC WebUI, shown in Applio's model info.
        "epoch": int(info.epoch),
        "step": int(info.step),
        "creation_date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_name": info.model_name,
        "author": info.author or "",
        "vocoder": "HiFi-GAN",
        "embedder_model": "contentvec",
        "speakers_id": int(info.speakers),
        "dataset_length": _hms(info.dataset_seconds),
        "model_hash": model_hash(weights),
    }


def save_export(path: Path, payload: dict[str, Any]) -> Path:
    import torch

    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)
