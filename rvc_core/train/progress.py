"""Where training reports to: the caller's callback, a tqdm bar on stderr, TensorBoard scalars.

Values arrive here already read back from the device (once per logging interval), so nothing in
this module touches the accelerator.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rvc_core.progress import ProgressCallback, ProgressEvent

# Our metric names -> TensorBoard tags (the tags RVC users know from RVC's own logs).
TENSORBOARD_TAGS: dict[str, str] = {
    "g_total": "loss/g/total",
    "d_total": "loss/d/total",
    "g_mel": "loss/g/mel",
    "g_kl": "loss/g/kl",
    "g_fm": "loss/g/fm",
    "g_adv": "loss/g/adv",
    "grad_norm_g": "grad_norm/g",
    "grad_norm_d": "grad_norm/d",
    "validation_mel": "validation/mel",
    "learning_rate": "learning_rate",
}
# Metrics shown to the caller as losses (grad norms go to TensorBoard only).
LOSS_KEYS: tuple[str, ...] = ("g_total", "d_total", "g_mel", "g_kl", "g_fm", "g_adv", "validation_mel")


class TrainingMonitor:
    """Fans one training run's progress out to its sinks. `close()` flushes them."""

    def __init__(
        self,
        *,
        callback: ProgressCallback | None,
        tensorboard_dir: Path | None,
        show_bar: bool | None,
        total_steps: int,
        initial_step: int,
    ) -> None:
        self._callback = callback
        self._writer: Any = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir))
        enabled = sys.stderr.isatty() if show_bar is None else show_bar
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial_step,
                desc="train",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )

    def step_done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def set_total_steps(self, total_steps: int) -> None:
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def report(
        self,
        *,
        epoch: int,
        epochs: int,
        step: int,
        metrics: dict[str, float],
        learning_rate: float,
        eta_seconds: float | None,
        seconds_per_epoch: float | None,
        message: str = "",
    ) -> None:
        losses = {k: v for k, v in metrics.items() if k in LOSS_KEYS}
        if self._callback is not None:
            self._callback(
                ProgressEvent(
                    stage="train",
                    message=message,
                    epoch=epoch,
                    epochs=epochs,
                    step=step,
                    losses=losses,
                    learning_rate=learning_rate,
                    eta_seconds=eta_seconds,
                    seconds_per_epoch=seconds_per_epoch,
                )
            )
        if self._writer is not None:
            for name, value in {**metrics, "learning_rate": learning_rate}.items():
                tag = TENSORBOARD_TAGS.get(name)
                if tag is not None:
                    self._writer.add_scalar(tag, value, step)
        if self._bar is not None:
            self._bar.set_postfix(
                {"epoch": epoch, **{k: f"{v:.3g}" for k, v in losses.items()}}, refresh=False
            )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
