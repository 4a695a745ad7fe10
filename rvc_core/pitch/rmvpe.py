"""`rmvpe`: RVC's default pitch method, on our own RMVPE network (`rmvpe_net.py`).

Front end: magnitude STFT (n_fft = win = 1024, hop 160, periodic Hann, each clip reflect-padded by
512 on both sides, as `center=True` does), Slaney-normalised HTK mel filters (128 bins, 30..8000
Hz), `log(clamp(mel, 1e-5))`. That gives exactly `n // 160 + 1` frames, the project's grid.
The U-Net needs a multiple of 32 frames: each clip's mel is continued by reflection (RVC pads
reflectively too) and its output trimmed back.

Decoding (RVC's "local average"): per frame, the salience-weighted mean of the cents of the 9
bins around the arg-max bin (bins outside 0..359 weigh nothing), `cents = 20 * bin +
1997.3794084376191`, `f0 = 10 * 2 ** (cents / 1200)`; a frame whose peak salience is at most
0.03 is unvoiced (0).

Batching: clips are grouped by their padded frame count (the multiple of 32 they are reflected
to) and, within that, by length, so that (clips x longest clip) stays under `batch_seconds` of
audio; each group is one tensor batch on the device. Every clip of a group enters the U-Net and
the BiGRU at exactly the size and with exactly the values it would have alone, so a batched clip
gets its solo result (to float rounding) and no frame is computed for padding alone.

On CPU the network runs in channels-last memory format: oneDNN's convolutions then skip a layout
reorder per call (measured ~15% faster on 2 cores, same values to float rounding).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_core.errors import AssetCorrupt
from rvc_core.pitch.base import HOP, SAMPLE_RATE, as_mono_clip, fit_to_grid, frame_count

if TYPE_CHECKING:
    import torch

    from rvc_core.pitch.base import PitchAssets
    from rvc_core.pitch.rmvpe_net import RmvpeArchitecture, RmvpeNet

log = logging.getLogger(__name__)

ASSET_NAME = "rmvpe.pt"
STATE_DICT_SPEC = Path(__file__).with_name("rmvpe_state_dict.tsv")  # keys/shapes of the official file

N_FFT = 1024  # samples, also the window length
N_MELS = 128
MEL_FMIN = 30.0  # Hz
MEL_FMAX = 8000.0  # Hz
LOG_CLAMP = 1e-5
THRESHOLD = 0.03  # peak salience at or below which a frame is unvoiced
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (relative to 10 Hz)
CENTS_PER_BIN = 20.0
LOCAL_AVERAGE_RADIUS = 4  # bins each side of the arg-max


def official_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the official `rmvpe.pt`, in file order."""
    lines = STATE_DICT_SPEC.read_text().splitlines()[1:]
    rows = (line.split("\t") for line in lines if line.strip())
    return {key: tuple(json.loads(shape)) for key, shape, _kind in rows}


class LogMel:
    """RMVPE's front end on a device; audio batches in, (batch, 128, frames) log-mel out."""

    def __init__(self, device: torch.device) -> None:
        import torch
        from torchaudio.functional import melscale_fbanks

        # The same filters as RVC's librosa.filters.mel(..., htk=True) (Slaney area normalisation).
        basis = melscale_fbanks(N_FFT // 2 + 1, MEL_FMIN, MEL_FMAX, N_MELS, SAMPLE_RATE, "slaney", "htk")
        self.basis = basis.T.contiguous().to(device)
        self.window = torch.hann_window(N_FFT, periodic=True, device=device)
        self.device = device

    def __call__(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Mel of each clip, zero-padded at the end to the batch's longest (in frames)."""
        import torch

        half = N_FFT // 2
        # numpy's reflect works for clips shorter than the pad, where torch's refuses.
        padded = [np.pad(c, half, mode="reflect") if c.size > 1 else _silence() for c in clips]
        width = max(p.size for p in padded)
        audio = np.zeros((len(clips), width), dtype=np.float32)
        for row, p in zip(audio, padded, strict=True):
            row[: p.size] = p
        x = torch.from_numpy(audio).to(self.device)
        spec = torch.stft(
            x, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window, center=False, return_complex=True
        )
        mel = self.basis @ spec.abs()
        return torch.log(torch.clamp(mel, min=LOG_CLAMP))


def _silence() -> np.ndarray:
    return np.zeros(N_FFT, dtype=np.float32)  # a 0- or 1-sample clip: one frame of silence


def reflect_indices(length: int, total: int) -> np.ndarray:
    """Indices 0..total-1 into a sequence of `length`, continued by mirror reflection past its end
    (any `total`, unlike `F.pad(mode="reflect")`)."""
    positions = np.arange(total)
    if length <= 1:
        return np.zeros(total, dtype=np.int64)
    period = 2 * (length - 1)
    folded = positions % period
    return np.where(folded < length, folded, period - folded).astype(np.int64)


def decode_salience(salience: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """(..., 360) salience -> (...) f0 in Hz by the local average around the arg-max; 0 = unvoiced."""
    import torch

    salience = salience.float()
    n_bins = salience.shape[-1]
    peak, centre = salience.max(dim=-1)
    offsets = torch.arange(-LOCAL_AVERAGE_RADIUS, LOCAL_AVERAGE_RADIUS + 1, device=salience.device)
    bins = centre.unsqueeze(-1) + offsets
    inside = (bins >= 0) & (bins < n_bins)
    weights = salience.gather(-1, bins.clamp(0, n_bins - 1)) * inside
    cents = CENTS_PER_BIN * bins + CENTS_OFFSET
    mean_cents = (weights * cents).sum(-1) / weights.sum(-1).clamp_min(1e-12)
    f0 = 10.0 * torch.pow(2.0, mean_cents / 1200.0)
    return torch.where(peak > threshold, f0, torch.zeros_like(f0))


def length_groups(
    lengths: Sequence[int], max_samples: int, bucket: Callable[[int], int] | None = None
) -> Iterator[list[int]]:
    """Indices grouped by ascending length so that (group size x longest member) <= `max_samples`
    (a single longer clip forms its own group); with `bucket`, a group holds only lengths of one
    bucket (the RMVPE extractor's: the padded frame count)."""
    key = bucket or (lambda _n: 0)
    group: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (key(lengths[i]), lengths[i])):
        joins = not group or key(lengths[group[0]]) == key(lengths[index])
        if group and (not joins or (len(group) + 1) * max(lengths[index], 1) > max_samples):
            yield group
            group = []
        group.append(index)
    if group:
        yield group


class RmvpeExtractor:
    method = "rmvpe"

    def __init__(self, net: RmvpeNet, *, device: str = "cpu", batch_seconds: float = 60.0) -> None:
        import torch

        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)  # in place; values and keys unchanged
        self.mel = LogMel(self.device)
        self.max_samples = max(1, int(batch_seconds * SAMPLE_RATE))
        # The official tools run this network in fp16 on GPUs; autocast keeps the mel and the
        # decoding in fp32.
        self.autocast = self.device.type == "cuda"

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = [as_mono_clip(x) for x in batch]
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(clips)
        for group in length_groups([c.size for c in clips], self.max_samples, self._padded_frames):
            for index, f0 in zip(group, self._extract_group([clips[i] for i in group]), strict=True):
                out[index] = fit_to_grid(f0, clips[index].size)
        return out

    def _padded_frames(self, samples: int) -> int:
        """Frames a clip of `samples` enters the U-Net with: its own multiple of 32."""
        step = self.net.arch.time_multiple
        return -(-frame_count(samples) // step) * step

    def _extract_group(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        frames = [frame_count(c.size) for c in clips]
        padded = [self._padded_frames(c.size) for c in clips]
        total = max(padded)  # every clip's own, for groups from `extract`
        with torch.inference_mode():
            mel = self.mel(clips)
            index = torch.from_numpy(np.stack([reflect_indices(n, total) for n in frames])).to(self.device)
            mel = mel.gather(2, index.unsqueeze(1).expand(-1, mel.shape[1], -1))
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                salience = self.net(mel, padded)
            f0 = decode_salience(salience).cpu().numpy()
        return [row[:n] for row, n in zip(f0, frames, strict=True)]


def build_random_net(arch: RmvpeArchitecture, seed: int = 0) -> RmvpeNet:
    """A randomly initialised network, reproducible and without touching the global RNG."""
    import torch

    from rvc_core.pitch.rmvpe_net import RmvpeNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RmvpeNet(arch)


def load_official_net(path: Path) -> RmvpeNet:
    """The full-size network with the weights of an official-layout `rmvpe.pt` (a plain state
    dict, any float dtype), loaded strictly: a missing, extra or misshapen tensor is an error."""
    import torch

    from rvc_core.pitch.rmvpe_net import OFFICIAL, RmvpeNet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download or a non-checkpoint file
        raise AssetCorrupt(f"{path} is not a readable torch checkpoint: {exc}", stage="pitch") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetCorrupt(f"{path} is not a plain RMVPE state dict", stage="pitch")
    net = RmvpeNet(OFFICIAL)
    problem = _layout_problem(state, net.state_dict())
    if problem:
        raise AssetCorrupt(f"{path} does not match the RMVPE architecture: {problem}", stage="pitch")
    net.load_state_dict(state, strict=True)
    return net


def _layout_problem(state: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> str:
    """A short description of how `state` differs from `wanted` in keys and shapes ('' if not)."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    # BatchNorm fills in a missing step counter itself (files saved by old torch lack it).
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in wanted]
    misshapen = [k for k in wanted if k in state and state[k].shape != wanted[k].shape]
    parts = [
        f"{len(keys)} {what} tensor(s) ({some(keys)})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    return "; ".join(parts)


def load_rmvpe(assets: PitchAssets, *, device: str = "cpu", batch_seconds: float = 60.0) -> RmvpeExtractor:
    from rvc_core.pitch.rmvpe_net import OFFICIAL, TINY

    if assets.random_init and assets.full_size_random:
        log.warning(
            "RMVPE IS RANDOMLY INITIALISED at full size (--assets random-full): pitch values are "
            "meaningless; use this only to measure speed and memory"
        )
        net = build_random_net(OFFICIAL)
    elif assets.random_init:
        log.warning(
            "RMVPE IS RANDOMLY INITIALISED (--assets none): pitch values are meaningless; "
            "use this only for tests and dry runs"
        )
        net = build_random_net(TINY)
    else:
        net = load_official_net(assets.path(ASSET_NAME))
    return RmvpeExtractor(net, device=device, batch_seconds=batch_seconds)
