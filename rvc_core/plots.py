"""`report.png`: loss and validation curves, segment-duration histogram, pitch distribution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rvc_core.atomic import atomic_path


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
    fig.suptitle(title)
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    ax = axes[0][0]
    for key, label in (("g_total", "generator"), ("d_total", "discriminator")):
        if history and key in history[0]:
            ax.plot(epochs, [h[key] for h in history], label=label)
    ax.set(title="training losses", xlabel="epoch")
    ax.legend(loc="best")
    ax = axes[0][1]
    for key, label in (("mel", "train mel L1"), ("val_mel", "validation mel L1")):
        if history and key in history[0]:
            ax.plot(epochs, [h[key] for h in history], label=label)
    ax.set(title="mel L1 (lower is better)", xlabel="epoch")
    ax.legend(loc="best")
    ax = axes[1][0]
    ax.hist(list(segment_seconds) or [0.0], bins=30, color="tab:green")
    ax.set(title="segment durations", xlabel="seconds", ylabel="segments")
    ax = axes[1][1]
    if len(voiced_f0_hz):
        ax.hist(voiced_f0_hz, bins=np.geomspace(50, 1100, 40), color="tab:purple")
        ax.set_xscale("log")
    ax.set(title="pitch distribution (voiced frames)", xlabel="Hz", ylabel="frames")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
