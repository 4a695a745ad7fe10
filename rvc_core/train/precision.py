"""Mixed precision and the non-finite-loss guard, both without host syncs.

- bf16 autocast on CUDA GPUs that support it, fp16 autocast with dynamic loss scaling on older
  CUDA GPUs, fp32 on CPU (bf16 there on request, where the CPU has it natively). Losses are always
  computed in fp32 by the caller.
- An optimiser step is skipped on the device: the fused AdamW kernels take a `found_inf` tensor
  (the protocol `torch.amp.GradScaler` uses) and leave parameters, moments and step count untouched
  when it is set. So a non-finite loss costs no host sync; the loop reads the skip counters once
  per logging interval (the lazy check, see `loop.py`).
- fp16 scaling is done here rather than by `GradScaler`, so that a non-finite *loss* skips the step
  without shrinking the scale (only gradient overflow with a finite loss does), and so the scaler
  never reads a value back to the host.
- Gradients are checked in every precision, not only fp16: in bf16 and fp32 the same kernel
  (`_amp_foreach_non_finite_check_and_unscale_`, here with an inverse scale of exactly 1, so no value
  changes) sets `found_inf` when a gradient is NaN or infinite although the loss was finite.
- Skips are counted on the device by network and kind (`SKIP_KINDS`); a step counts towards the
  "consecutive non-finite steps" limit when either network skipped for a non-finite loss or
  gradient. An fp16 overflow is the scaler's normal search for its scale and counts towards that
  limit only once the scale is down to 1 or less (then the gradients are non-finite in themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch.amp.GradScaler's defaults.
INITIAL_SCALE = 2.0**16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000  # steps without overflow before the scale doubles

NETWORKS: tuple[str, ...] = ("g", "d")
# Why an optimiser step was skipped: a non-finite loss; non-finite gradients with a finite loss
# (bf16/fp32); gradient overflow of the fp16 loss scale with a finite loss.
SKIP_KINDS: tuple[str, ...] = ("nonfinite_loss", "nonfinite_grad", "scaler_overflow")
SKIP_COUNTER_NAMES: tuple[str, ...] = tuple(f"{n}_{k}" for n in NETWORKS for k in SKIP_KINDS)


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" | "fp16" | "fp32"
    device_type: str  # "cuda" | "cpu"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> Any:
        """The autocast context of the forward passes (disabled in fp32)."""
        import torch

        dtype = self.autocast_dtype
        return torch.autocast(self.device_type, dtype=dtype, enabled=dtype is not None)


PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX), rather than emulating it."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_precision(device: str, requested: str = "auto") -> Precision:
    """`auto`: bf16 autocast on CUDA GPUs that support it, else fp16 there; fp32 on CPU. A named
    precision is used where the device runs it natively, and refused (ConfigError) elsewhere.

    bf16 on CPU is opt-in: on a CPU with native bf16 it takes about a third less time per full step
    (docs/performance.md), but it changes the numbers that fp32 gives.
    """
    import torch

    from rvc_core.errors import ConfigError

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if requested not in PRECISION_CHOICES:
        raise ConfigError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if requested == "auto":
        if device_type == "cpu":
            return Precision("fp32", "cpu")
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", "cuda")
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if requested == "bf16":
        native = torch.cuda.is_bf16_supported() if device_type == "cuda" else cpu_has_native_bf16()
        if not native:
            raise ConfigError(f"precision bf16: this {device_type.upper()} has no native bf16; use fp32")
    return Precision(requested, device_type)


class GuardedStepper:
    """Scales losses (fp16 only) and steps optimisers, skipping on the device when the loss or the
    gradients are not finite. Its counters stay on the device; the loop reads them once per interval."""

    def __init__(self, precision: Precision, device: str) -> None:
        import torch

        self.precision = precision
        self.device = torch.device(device)
        self.uses_scale = precision.name == "fp16"
        self._scale = torch.full((), INITIAL_SCALE if self.uses_scale else 1.0, device=self.device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=self.device)
        # This step's gradient overflow with a finite loss: the only thing that shrinks the scale.
        self._overflow = torch.zeros((), device=self.device)
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=self.device)
        self.consecutive_skips = torch.zeros((), dtype=torch.long, device=self.device)
        self.worst_consecutive_skips = torch.zeros((), dtype=torch.long, device=self.device)
        self._step_skipped = torch.zeros((), device=self.device)
        # Optimiser steps skipped, by `SKIP_COUNTER_NAMES` (network x kind), cumulative.
        self.skip_counts = torch.zeros(len(SKIP_COUNTER_NAMES), dtype=torch.long, device=self.device)
        self._unit_scale = torch.ones((), device=self.device)

    @property
    def scale(self) -> torch.Tensor:
        return self._scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale if self.uses_scale else loss

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        loss_ok: torch.Tensor,
        network: str = "g",
    ) -> None:
        """Unscales the gradients (fp16) and steps `optimizer` unless `loss_ok` is false or a gradient
        is not finite; counts a skip of `network` ("g" or "d") by kind. No host sync (fused AdamW)."""
        import torch

        loss_bad = (~loss_ok).float()
        grads = [p.grad for p in params if p.grad is not None]
        grad_bad = torch.zeros((), device=self.device)
        inv_scale = self._scale.reciprocal() if self.uses_scale else self._unit_scale
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, grad_bad, inv_scale)
        grad_only = grad_bad * (1.0 - loss_bad)  # bad gradients behind a finite loss
        skip = torch.maximum(loss_bad, grad_bad)
        if self.uses_scale:
            self._overflow = torch.maximum(self._overflow, grad_only)
            # Overflow at a scale of 1 or less: the gradients themselves are not finite.
            failed = torch.maximum(loss_bad, grad_only * (self._scale <= 1.0).float())
            kinds = torch.stack([loss_bad, torch.zeros_like(grad_only), grad_only])
        else:
            failed = skip
            kinds = torch.stack([loss_bad, grad_only, torch.zeros_like(grad_only)])
        self._step_skipped = torch.maximum(self._step_skipped, failed)
        first = NETWORKS.index(network) * len(SKIP_KINDS)
        self.skip_counts[first : first + len(SKIP_KINDS)] += kinds.long()
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = skip  # type: ignore[attr-defined]
            optimizer.grad_scale = None  # type: ignore[attr-defined]
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
        elif not bool(skip):  # an unfused optimiser can only be skipped from the host (one sync)
            optimizer.step()

    def skip_summary(self, values: Sequence[float]) -> dict[str, int]:
        """`skip_counts` read back (as a list) by name."""
        return {name: int(v) for name, v in zip(SKIP_COUNTER_NAMES, values, strict=True)}

    def end_step(self) -> None:
        """Once per training step, after both optimisers: counts a skipped step, adapts the scale."""
        import torch

        skipped = self._step_skipped.long()
        self.skipped_steps += skipped
        self.consecutive_skips = (self.consecutive_skips + 1) * skipped
        self.worst_consecutive_skips = torch.maximum(self.worst_consecutive_skips, self.consecutive_skips)
        self._step_skipped = torch.zeros((), device=self.device)
        if self.uses_scale:
            torch._amp_update_scale_(
                self._scale,
                self._growth_tracker,
                self._overflow,
                GROWTH_FACTOR,
                BACKOFF_FACTOR,
                GROWTH_INTERVAL,
            )
            self._overflow = torch.zeros((), device=self.device)

    def reset_worst_run(self) -> None:
        """Starts a new observation window for the longest run of skips (after the loop read it):
        the run still in progress carries over, so a burst spanning two reads is not missed."""
        self.worst_consecutive_skips = self.consecutive_skips.clone()

    def abandon_step(self) -> None:
        """Forgets a step that failed half-way (out of memory) before `end_step`."""
        import torch

        self._overflow = torch.zeros((), device=self.device)
        self._step_skipped = torch.zeros((), device=self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision.name,
            "scale": self._scale.cpu(),
            "growth_tracker": self._growth_tracker.cpu(),
            "skipped_steps": self.skipped_steps.cpu(),
            "consecutive_skips": self.consecutive_skips.cpu(),
            "skip_counts": self.skip_counts.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The loss scale carries over only between runs of the same precision (a run resumed on
        # another GPU type starts its scale afresh).
        if state.get("precision") == self.precision.name:
            self._scale = state["scale"].to(self.device)
            self._growth_tracker = state["growth_tracker"].to(self.device)
        self.skipped_steps = state["skipped_steps"].to(self.device)
        self.consecutive_skips = state["consecutive_skips"].to(self.device)
        self.worst_consecutive_skips = self.consecutive_skips.clone()
        if "skip_counts" in state:  # absent from checkpoints written before skips were counted by kind
            self.skip_counts = state["skip_counts"].to(self.device)
