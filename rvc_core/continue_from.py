"""Continue training: the final generator and discriminator as RVC's own training checkpoints.

Every finished job also writes `G_<n>.pth` and `D_<n>.pth` (n = the global step, as RVC names
them), each a `torch.save`d dict in RVC's training-checkpoint layout:

- `model`: the full state dict (fp32, `enc_q` included) under RVC's names: weight-normed layers as
  `<module>.weight_g` / `<module>.weight_v` (exactly the names of `rvc_state_dicts/G_*.tsv`, `D_*.tsv`);
- `iteration`: the epoch (RVC stores the epoch there and resumes at `iteration + 1`);
- `optimizer`: the AdamW `state_dict()` of that network;
- `learning_rate`: the configured (initial) learning rate, as RVC writes `hps.train.learning_rate`.

RVC WebUI and Applio take them as custom pretrained files (they read `model`), and so do we:
`load_pretrained` accepts `{"model": …}` with legacy names, strictly. A job started with a
base model (`JobEnvironment.base_g/base_d`) begins from such a pair instead of RVC's official
pretrained weights. The source is the trainer's last checkpoint (`checkpoints/latest.pt`), which
holds the final networks and optimisers (the exported `.pth` may be the best epoch instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_core.atomic import atomic_path


@dataclass(frozen=True)
class CheckpointPair:
    generator: Path
    discriminator: Path
    step: int
    epoch: int

    def artifacts(self) -> dict[str, Path]:
        return {"G": self.generator, "D": self.discriminator}


def pair_names(step: int) -> tuple[str, str]:
    return f"G_{step}.pth", f"D_{step}.pth"


def rvc_checkpoint(
    model_state: dict[str, Any], optimizer_state: dict[str, Any], *, epoch: int, learning_rate: float
) -> dict[str, Any]:
    """One network's file in RVC's training-checkpoint layout (names converted to `weight_g/_v`)."""
    from rvc_core.models import to_legacy_state_dict

    legacy = to_legacy_state_dict(model_state)
    return {
        "model": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in legacy.items()},
        "iteration": int(epoch),
        "optimizer": optimizer_state,
        "learning_rate": float(learning_rate),
    }


def _initial_lr(optimizer_state: dict[str, Any], fallback: float) -> float:
    groups = optimizer_state.get("param_groups") or [{}]
    return float(groups[0].get("initial_lr", groups[0].get("lr", fallback)))


def write_checkpoint_pair(checkpoint: Path, outdir: Path, *, learning_rate: float = 1e-4) -> CheckpointPair:
    """`outdir/G_<n>.pth` and `outdir/D_<n>.pth` from the trainer's checkpoint file (`latest.pt`).

    Skips the writing when both already exist (a finishing call that resumes); removes a pair of
    another step (an earlier, shorter run in the same folder)."""
    import torch

    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    step, epoch = int(state["run"]["step"]), int(state["run"]["epoch"])
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    g_name, d_name = pair_names(step)
    for stale in (*outdir.glob("G_*.pth"), *outdir.glob("D_*.pth")):
        if stale.name not in (g_name, d_name):
            stale.unlink()
    networks = ((g_name, "generator", "optim_g"), (d_name, "discriminator", "optim_d"))
    for name, model_key, optim_key in networks:
        target = outdir / name
        if target.exists():
            continue
        optim = state[optim_key]
        payload = rvc_checkpoint(
            state[model_key], optim, epoch=epoch, learning_rate=_initial_lr(optim, learning_rate)
        )
        with atomic_path(target) as tmp:
            torch.save(payload, tmp)
    return CheckpointPair(outdir / g_name, outdir / d_name, step, epoch)
