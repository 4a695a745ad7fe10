"""Weight files: legacy weight-norm names, strict pretrained loading, and the exported generator weights.

Our modules use `torch.nn.utils.parametrizations.weight_norm`, whose parameters are named
`<module>.parametrizations.weight.original0` (magnitude g) and `.original1` (direction v). RVC's files
and every loader use the older `<module>.weight_g` / `<module>.weight_v`; shapes are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rvc_core.errors import AssetCorrupt, AssetMissing, PretrainedMismatch

if TYPE_CHECKING:
    from rvc_core.models.generator import Generator

# Parametrization suffix -> legacy suffix.
_LEGACY_SUFFIXES: dict[str, str] = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}
_MAX_LISTED = 10  # keys named per category in a mismatch message


def _rename(name: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def to_legacy_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`...parametrizations.weight.original0/1` -> `...weight_g` / `...weight_v`; other keys unchanged."""
    return {_rename(name, _LEGACY_SUFFIXES): value for name, value in sd.items()}


def from_legacy_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`...weight_g` / `...weight_v` -> `...parametrizations.weight.original0/1`; other keys unchanged."""
    modern = {legacy: new for new, legacy in _LEGACY_SUFFIXES.items()}
    return {_rename(name, modern): value for name, value in sd.items()}


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise AssetMissing(f"pretrained weights not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise AssetCorrupt(f"cannot read pretrained weights {path}: {exc}") from exc
    # Official files wrap the weights as {"model": state_dict, ...}; a bare state dict is accepted too.
    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise AssetCorrupt(f"{path} holds no state dict of tensors")
    return payload


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {label}: {shown}{more}"


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load official-layout weights into `model`, strictly, cast to the model's dtype.

    Raises PretrainedMismatch naming missing, unexpected and mis-shaped keys (first 10 of each, in the
    files' legacy names), AssetMissing or AssetCorrupt when the file is absent or unreadable.
    """
    loaded = from_legacy_state_dict(_read_state_dict(Path(path)))
    expected = model.state_dict()
    missing = sorted(expected.keys() - loaded.keys())
    unexpected = sorted(loaded.keys() - expected.keys())
    misshaped = sorted(
        name for name in expected.keys() & loaded.keys() if loaded[name].shape != expected[name].shape
    )
    if missing or unexpected or misshaped:

        def legacy(name: str) -> str:
            return _rename(name, _LEGACY_SUFFIXES)

        problems = []
        if missing:
            problems.append(_listing("missing", [legacy(n) for n in missing]))
        if unexpected:
            problems.append(_listing("unexpected", [legacy(n) for n in unexpected]))
        if misshaped:
            problems.append(
                _listing(
                    "mis-shaped",
                    [
                        f"{legacy(n)} file {tuple(loaded[n].shape)} vs model {tuple(expected[n].shape)}"
                        for n in misshaped
                    ],
                )
            )
        raise PretrainedMismatch(f"{path} does not fit this {type(model).__name__}: " + "; ".join(problems))
    # load_state_dict copies into the existing parameters, which casts fp16 files to the model's dtype.
    model.load_state_dict(loaded, strict=True)


def export_generator_weights(g: Generator) -> dict[str, Tensor]:
    """The `weight` entry of a small model file: legacy names, no `enc_q` (the posterior encoder is
    only needed for training), fp16, detached, on the CPU, contiguous."""
    return {
        name: value.detach().to(device="cpu", dtype=torch.float16).contiguous()
        for name, value in to_legacy_state_dict(g.state_dict()).items()
        if "enc_q" not in name
    }
