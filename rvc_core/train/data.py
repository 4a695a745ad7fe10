"""The prepared dataset in memory: loading, the validation split, length-bucketed batches.

Everything is loaded once. Features are repeated ×2 in time (50 → 100 frames/s) and then the
features, pitch, spectrogram and audio are trimmed to the shortest, as RVC does (RVC.md §4–5).
Linear and mel spectrograms are computed once at load on the training device (milliseconds per
segment on a GPU), so nothing is cached on disk. The tensors stay on the GPU when they fit
(`RESIDENT_SHARE` of free memory); otherwise in host memory, each batch assembled in pinned memory
and copied to the GPU without a sync.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_core.errors import TooLittleAudio, WorkDirIncomplete
from rvc_core.layout import WorkDir
from rvc_core.spec import FEATURE_DIMS, SPECTROGRAMS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Share of free GPU memory the dataset may take before it is kept in host memory instead.
RESIDENT_SHARE = 0.3
# Lengths are jittered by up to this many frames before sorting into batches: batches hold items
# of similar length (little padding) yet their composition changes every epoch.
LENGTH_JITTER_FRAMES = 100


@dataclass(frozen=True)
class SegmentRecord:
    id: str
    speaker_id: int
    seconds: float


@dataclass(frozen=True)
class ValidationSplit:
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]


def read_segment_records(wd: WorkDir) -> list[SegmentRecord]:
    """Every kept segment listed in `segments.json` (`{"files": [{"segments": [...]}, ...]}`), by id."""
    if not wd.segments_listing.exists():
        raise WorkDirIncomplete(f"{wd.segments_listing} is missing: run prepare first", stage="train")
    listing = json.loads(wd.segments_listing.read_text())
    records = [
        SegmentRecord(id=str(s["id"]), speaker_id=int(s.get("speaker_id", 0)), seconds=float(s["seconds"]))
        for f in listing.get("files", [])
        for s in f.get("segments", [])
    ]
    return sorted(records, key=lambda r: r.id)


def split_validation(ids: Sequence[str], fraction: float, seed: int) -> ValidationSplit:
    """Holds out `round(fraction * n)` segments (at least one), chosen by the seed, never trained on."""
    ordered = sorted(ids)
    if len(ordered) < 2:
        raise TooLittleAudio(
            f"{len(ordered)} segment(s) prepared; training needs at least 2 (one is held out for validation)",
            stage="train",
        )
    n_val = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[:n_val].tolist())
    return ValidationSplit(
        train_ids=tuple(s for i, s in enumerate(ordered) if i not in chosen),
        validation_ids=tuple(s for i, s in enumerate(ordered) if i in chosen),
    )


def epoch_plan(frames: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch as lists of item indices: a pure function of (seed, epoch).

    Items are sorted by jittered length and cut into batches of `batch_size` (so padding stays small
    and only the last batch is short), then the batch order is shuffled."""
    rng = np.random.default_rng([seed, epoch])
    keys = np.asarray(frames, dtype=np.float64) + rng.uniform(0, LENGTH_JITTER_FRAMES, len(frames))
    order = np.argsort(keys, kind="stable").tolist()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def split_batches(batches: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Re-cuts batches to at most `batch_size` items each, keeping the item order (after an OOM)."""
    return [list(b[i : i + batch_size]) for b in batches for i in range(0, len(b), batch_size)]


@dataclass
class Batch:
    """Padded tensors of one step, on the training device. Lengths are in 100 fps frames."""

    phone: torch.Tensor  # [B, T, dim] float32
    lengths: torch.Tensor  # [B] long
    pitch: torch.Tensor | None  # [B, T] long coarse ids
    pitchf: torch.Tensor | None  # [B, T] float32 Hz
    spec: torch.Tensor  # [B, spec_channels, T]
    mel: torch.Tensor  # [B, n_mels, T] float32 log-mel of the real audio
    wave: torch.Tensor  # [B, 1, T * hop] float32
    sid: torch.Tensor  # [B] long

    @property
    def size(self) -> int:
        return int(self.phone.shape[0])


@dataclass
class ResidentDataset:
    """Per-segment tensors (unpadded) on `storage`, and how to batch them onto `device`."""

    ids: tuple[str, ...]
    frames: tuple[int, ...]  # 100 fps frames per item, after trimming
    speaker_ids: tuple[int, ...]
    phone: list[torch.Tensor]  # [T, dim]
    pitch: list[torch.Tensor] | None  # [T] long
    pitchf: list[torch.Tensor] | None  # [T] float32
    spec: list[torch.Tensor]  # [C, T]
    mel: list[torch.Tensor]  # [n_mels, T]
    wave: list[torch.Tensor]  # [T * hop]
    hop: int  # samples per frame
    storage: str
    device: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seconds(self) -> float:
        return sum(self.frames) / 100.0

    def collate(self, indices: Sequence[int], *, length_multiple: int = 1) -> Batch:
        """The items padded to the longest, rounded up to `length_multiple` frames (a compiled step
        sees few distinct shapes that way; the padding is masked like any other)."""
        import torch

        frames = [self.frames[i] for i in indices]
        longest = -(-max(frames) // length_multiple) * length_multiple
        # Batches assembled in host memory are pinned so the copy to the GPU does not block.
        pin = self.storage == "cpu" and self.device.startswith("cuda")

        def padded(items: list[torch.Tensor], length: int, *, time_first: bool = False) -> torch.Tensor:
            chosen = [items[i] for i in indices]
            dtype = torch.float32 if chosen[0].is_floating_point() else chosen[0].dtype
            rest = chosen[0].shape[1:] if time_first else chosen[0].shape[:-1]
            shape = (len(chosen), length, *rest) if time_first else (len(chosen), *rest, length)
            out = torch.zeros(shape, dtype=dtype, device=self.storage, pin_memory=pin)
            for row, item in enumerate(chosen):
                n = item.shape[0] if time_first else item.shape[-1]
                (out[row, :n] if time_first else out[row, ..., :n]).copy_(item)
            return out.to(self.device, non_blocking=True)

        return Batch(
            phone=padded(self.phone, longest, time_first=True),
            lengths=_small_tensor(frames, self.device),
            pitch=padded(self.pitch, longest) if self.pitch is not None else None,
            pitchf=padded(self.pitchf, longest) if self.pitchf is not None else None,
            spec=padded(self.spec, longest),
            mel=padded(self.mel, longest),
            wave=padded(self.wave, longest * self.hop).unsqueeze(1),
            sid=_small_tensor([self.speaker_ids[i] for i in indices], self.device),
        )

    def subset(self, indices: Sequence[int]) -> ResidentDataset:
        def pick(items: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            return None if items is None else [items[i] for i in indices]

        return ResidentDataset(
            ids=tuple(self.ids[i] for i in indices),
            frames=tuple(self.frames[i] for i in indices),
            speaker_ids=tuple(self.speaker_ids[i] for i in indices),
            phone=[self.phone[i] for i in indices],
            pitch=pick(self.pitch),
            pitchf=pick(self.pitchf),
            spec=[self.spec[i] for i in indices],
            mel=[self.mel[i] for i in indices],
            wave=[self.wave[i] for i in indices],
            hop=self.hop,
            storage=self.storage,
            device=self.device,
        )


def _small_tensor(values: list[int], device: str) -> torch.Tensor:
    """A tiny long tensor on `device`, copied from pinned memory so CUDA does not sync the host."""
    import torch

    host = torch.tensor(values, dtype=torch.long)
    if device.startswith("cuda"):
        return host.pin_memory().to(device, non_blocking=True)
    return host


@dataclass(frozen=True)
class _LoadedArrays:
    wave: np.ndarray  # [samples] float32
    features: np.ndarray  # [frames, dim] at 100 fps
    coarse: np.ndarray | None
    f0: np.ndarray | None
    frames: int  # before the spectrogram is known


def _load_arrays(wd: WorkDir, seg_id: str, *, dim: int, f0: bool, hop: int) -> _LoadedArrays:
    from rvc_core.audio_io import read_wav_float32

    paths = [wd.wav_dir / f"{seg_id}.wav", wd.features_dir / f"{seg_id}.npy"]
    if f0:
        paths += [wd.coarse_dir / f"{seg_id}.npy", wd.f0_dir / f"{seg_id}.npy"]
    missing = [str(p.relative_to(wd.root)) for p in paths if not p.exists()]
    if missing:
        raise WorkDirIncomplete(
            f"segment {seg_id}: missing {', '.join(missing)}; run prepare first", stage="train"
        )
    wave, _ = read_wav_float32(paths[0])
    features = np.load(paths[1])
    if features.ndim != 2 or features.shape[1] != dim:
        raise WorkDirIncomplete(
            f"segment {seg_id}: features have shape {features.shape}, expected [frames, {dim}] "
            "(was the work dir prepared for another version?)",
            stage="train",
        )
    features = np.repeat(features, 2, axis=0)  # 50 → 100 frames/s
    coarse = np.load(paths[2]) if f0 else None
    fine = np.load(paths[3]) if f0 else None
    lengths = [features.shape[0], len(wave) // hop]
    if coarse is not None and fine is not None:
        lengths += [len(coarse), len(fine)]
    return _LoadedArrays(wave=wave, features=features, coarse=coarse, f0=fine, frames=min(lengths))


def _dataset_bytes(frames: int, *, dim: int, spec_channels: int, n_mels: int, hop: int, half: bool) -> int:
    element = 2 if half else 4
    per_frame = dim * element + spec_channels * element + n_mels * 4 + hop * 4 + 8 + 4
    return frames * per_frame


def _storage_for(device: str, estimated_bytes: int) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    if estimated_bytes <= RESIDENT_SHARE * free:
        return device
    log.warning(
        "dataset needs ~%.1f GiB, more than %.0f%% of free GPU memory: keeping it in host memory",
        estimated_bytes / 2**30,
        RESIDENT_SHARE * 100,
    )
    return "cpu"


def load_dataset(
    workdir: Path,
    records: Sequence[SegmentRecord],
    *,
    version: str,
    sample_rate: int,
    f0: bool,
    min_frames: int,
    device: str,
) -> ResidentDataset:
    """Loads `records` from a prepared work dir. Segments shorter than `min_frames` (the training
    window) are left out with a warning."""
    import torch

    from rvc_core.models.audio import linear_spectrogram, mel_from_linear

    wd = WorkDir(Path(workdir))
    spec_params = SPECTROGRAMS[sample_rate]
    hop = spec_params.hop_length
    dim = FEATURE_DIMS[version]
    loaded: list[tuple[SegmentRecord, _LoadedArrays]] = []
    for record in records:
        arrays = _load_arrays(wd, record.id, dim=dim, f0=f0, hop=hop)
        if arrays.frames < min_frames:
            log.warning(
                "segment %s: %d frames, shorter than the %d-frame window: left out",
                record.id,
                arrays.frames,
                min_frames,
            )
            continue
        loaded.append((record, arrays))
    if not loaded:
        raise TooLittleAudio("no segment is long enough to train on", stage="train")

    half = device.startswith("cuda")
    store_dtype = torch.float16 if half else torch.float32
    estimate = _dataset_bytes(
        sum(a.frames for _, a in loaded),
        dim=dim,
        spec_channels=spec_params.n_fft // 2 + 1,
        n_mels=spec_params.n_mels,
        hop=hop,
        half=half,
    )
    storage = _storage_for(device, estimate)
    phone, spec, mel, wave, pitch, pitchf, frames = [], [], [], [], [], [], []
    for _record, a in loaded:
        audio = torch.from_numpy(a.wave).to(device)
        magnitude = linear_spectrogram(audio.unsqueeze(0), spec_params)[0]
        n = min(a.frames, magnitude.shape[-1])
        magnitude = magnitude[:, :n]
        frames.append(n)
        spec.append(magnitude.to(storage, store_dtype))
        mel.append(mel_from_linear(magnitude.unsqueeze(0), spec_params)[0].float().to(storage))
        wave.append(audio[: n * hop].to(storage))
        phone.append(torch.from_numpy(a.features[:n]).to(storage, store_dtype))
        if a.coarse is not None and a.f0 is not None:
            pitch.append(torch.from_numpy(a.coarse[:n].astype(np.int64)).to(storage))
            pitchf.append(torch.from_numpy(a.f0[:n].astype(np.float32)).to(storage))
    return ResidentDataset(
        ids=tuple(r.id for r, _ in loaded),
        frames=tuple(frames),
        speaker_ids=tuple(r.speaker_id for r, _ in loaded),
        phone=phone,
        pitch=pitch if f0 else None,
        pitchf=pitchf if f0 else None,
        spec=spec,
        mel=mel,
        wave=wave,
        hop=hop,
        storage=storage,
        device=device,
    )
