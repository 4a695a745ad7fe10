"""`report.png`: loss and validation curves, segment-duration histogram, pitch distribution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rvc_core.atomic import atomic_path
from rvc_core.spec import F0_MAX, F0_MIN


def write_report_png(
    path: Path,
    history: Sequence[Mapping[str, float]],
    segment_seconds: Sequence[float],
    voiced_f0_hz: np.ndarray,
    title: str,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    try:
        fig.suptitle(title)
        _plot_curves(axes[0][0], history, (("g_total", "generator"), ("d_total", "discriminator")))
        axes[0][0].set(title="training losses", xlabel="epoch")
        _plot_curves(axes[0][1], history, (("mel", "train mel L1"), ("val_mel", "validation mel L1")))
        axes[0][1].set(title="mel L1 (lower is better)", xlabel="epoch")
        ax = axes[1][0]
        ax.hist(list(segment_seconds) or [0.0], bins=30, color="tab:green")
        ax.set(title="segment durations", xlabel="seconds", ylabel="segments")
        ax = axes[1][1]
        if len(voiced_f0_hz):
            ax.hist(voiced_f0_hz, bins=np.geomspace(F0_MIN, F0_MAX, 40), color="tab:purple")
            ax.set_xscale("log")
        ax.set(title="pitch distribution (voiced frames)", xlabel="Hz", ylabel="frames")
        fig.tight_layout()
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return Path(path)


def _plot_curves(ax: Any, history: Sequence[Mapping[str, float]], curves: Sequence[tuple[str, str]]) -> None:
    """One line per (history key, label) that the history records, against the epoch."""
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    for key, label in curves:
        if history and key in history[0]:
            ax.plot(epochs, [h[key] for h in history], label=label)
    ax.legend(loc="best")
