"""Content features (RVC.md §4): HuBERT-base / ContentVec outputs on 16 kHz audio, 50 frames/s.

v2 reads transformer layer 12 (768-d); v1 reads layer 9 through `final_proj` (256-d). Input is the
raw float waveform: no normalisation, no padding mask (RVC passes an all-false mask).

Batching: items are zero-padded at the end to the longest item of their batch and the outputs
trimmed back per item. A batch of unequal items runs with their lengths
(`HubertModel.layer_output(..., lengths)`): the front end per item, the transformer batched with
the padded frames zeroed and masked out of attention, so every item gets what it would get alone
(what RVC computes), to float rounding. Items of one batch may differ by `pad_tolerance` (a
fraction of the longest): the padded frames still cost transformer time. Batching is what fills a
GPU; on CPU it gains little (measured ~5% on 2 cores: HuBERT is already bound by its matrix
products there), so the CPU batch stays small (30 s) to keep memory flat.

Precision: float32 on CPU; float16 autocast on CUDA (weights stay float32, norms run in float32).
An item whose features are not finite is recomputed alone in float32; if it still is not,
NonFiniteFeatures is raised. NaN or inf features are never returned.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rvc_core.assets import HUBERT_FAIRSEQ, HUBERT_HF_CONFIG, HUBERT_HF_WEIGHTS, AssetStore
from rvc_core.errors import AssetCorrupt, AssetMissing, ConfigError, NonFiniteFeatures
from rvc_core.features.hubert import HubertModel, random_full_size, random_stand_in
from rvc_core.features.weights import LoadedWeights, load_fairseq_checkpoint, load_hf_folder
from rvc_core.spec import FEATURE_DIMS, FEATURE_HOP, FEATURE_LAYERS, FEATURE_SAMPLE_RATE, FEATURE_WINDOW

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_BATCH_SECONDS = {"cpu": 30.0, "cuda": 120.0}  # seconds of padded audio per forward pass
# Default length spread within a batch: `prepare`'s segments vary (silence cuts them), so exact
# lengths alone leave most batches with one item.
DEFAULT_PAD_TOLERANCE = 0.2


def content_frames(n_samples: int) -> int:
    """Feature frames for `n_samples` of 16 kHz audio: (n - 400) // 320 + 1 (0 when shorter than 400)."""
    return 0 if n_samples < FEATURE_WINDOW else (n_samples - FEATURE_WINDOW) // FEATURE_HOP + 1


def plan_batches(
    lengths: Sequence[int], *, max_batch_samples: int, pad_tolerance: float = 0.0
) -> list[list[int]]:
    """Groups item indices, longest first, so that no item is padded by more than `pad_tolerance`
    (a fraction of its group's longest item) and a group holds at most `max_batch_samples` padded
    samples (an item longer than that still gets a group of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        n = lengths[index]
        fits = (longest - n) <= pad_tolerance * longest and (len(current) + 1) * longest <= max_batch_samples
        if current and fits:
            current.append(index)
            continue
        if current:
            groups.append(current)
        current, longest = [index], n
    if current:
        groups.append(current)
    return groups


class ContentEncoder:
    """Turns 16 kHz waveforms into content features for one RVC version."""

    def __init__(
        self,
        model: HubertModel,
        *,
        version: str,
        output_layer: int,
        device: str,
        half: bool,
        max_batch_samples: int,
        pad_tolerance: float = 0.0,
    ) -> None:
        self.model = model
        self.version = version
        self.output_layer = output_layer
        self.device = device
        self.half = half
        self.max_batch_samples = max_batch_samples
        self.pad_tolerance = pad_tolerance

    @property
    def dim(self) -> int:
        return FEATURE_DIMS[self.version]

    def extract(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 features of shape (content_frames(len(item)), dim) for each 1-D 16 kHz item."""
        items = [_validated(index, audio) for index, audio in enumerate(batch)]
        results: list[np.ndarray] = [np.empty((0, self.dim), np.float32)] * len(items)
        groups = plan_batches(
            [len(item) for item in items],
            max_batch_samples=self.max_batch_samples,
            pad_tolerance=self.pad_tolerance,
        )
        for group in groups:
            for index, features in zip(group, self._run_group([(i, items[i]) for i in group]), strict=True):
                results[index] = features
        return results

    def _run_group(self, items: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        import torch

        longest = max(len(audio) for _, audio in items)
        padded = np.zeros((len(items), longest), np.float32)
        for row, (_, audio) in enumerate(items):
            padded[row, : len(audio)] = audio
        lengths = [len(audio) for _, audio in items]
        ragged = lengths if min(lengths) < longest else None  # equal rows: the plain batched path
        output = self._forward(torch.from_numpy(padded), half=self.half, lengths=ragged)
        if output.shape[1] != content_frames(longest) or output.shape[2] != self.dim:
            raise RuntimeError(
                f"encoder gave {tuple(output.shape[1:])} for {longest} samples, "
                f"expected ({content_frames(longest)}, {self.dim})"
            )
        results = []
        for row, (index, audio) in enumerate(items):
            features = output[row, : content_frames(len(audio))]
            if not np.isfinite(features).all():
                features = self._recompute_in_fp32(index, audio)
            results.append(np.ascontiguousarray(features, dtype=np.float32))
        return results

    def _recompute_in_fp32(self, index: int, audio: np.ndarray) -> np.ndarray:
        import torch

        log.warning("content features of item %d were not finite; recomputing it alone in float32", index)
        features = self._forward(torch.from_numpy(audio[None, :]), half=False)[0]
        if not np.isfinite(features).all():
            raise NonFiniteFeatures(
                f"content features of item {index} ({len(audio)} samples, "
                f"{len(audio) / FEATURE_SAMPLE_RATE:.2f} s) contain NaN or inf even in float32"
            )
        return features

    def _forward(
        self, waveforms: torch.Tensor, *, half: bool, lengths: list[int] | None = None
    ) -> np.ndarray:
        """(batch, samples) float32 on the host -> (batch, frames, dim) float32 on the host;
        `lengths`: samples per row when the rows differ (see `HubertModel.layer_output`)."""
        import torch

        autocast = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            hidden = self.model.layer_output(waveforms.to(self.device), self.output_layer, lengths)
            if self.version == "v1":
                hidden = self.model.project(hidden)
        return hidden.float().cpu().numpy()


def _validated(index: int, audio: np.ndarray) -> np.ndarray:
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"item {index} must be a 1-D waveform, got shape {array.shape}")
    if len(array) < FEATURE_WINDOW:
        raise ValueError(
            f"item {index} has {len(array)} samples; at least {FEATURE_WINDOW} (25 ms) are needed"
        )
    if not np.isfinite(array).all():
        raise NonFiniteFeatures(f"input audio of item {index} contains NaN or inf")
    return array


def _load_weights(assets: AssetStore) -> LoadedWeights:
    """The fairseq file when present, else the Hugging Face folder; each verified first."""
    if assets.is_present(HUBERT_FAIRSEQ):
        assets.verify(HUBERT_FAIRSEQ)
        return load_fairseq_checkpoint(assets.path(HUBERT_FAIRSEQ))
    if assets.is_present(HUBERT_HF_CONFIG) and assets.is_present(HUBERT_HF_WEIGHTS):
        assets.verify(HUBERT_HF_CONFIG)
        assets.verify(HUBERT_HF_WEIGHTS)
        return load_hf_folder(assets.path(HUBERT_HF_WEIGHTS).parent)
    try:
        assets.path(HUBERT_FAIRSEQ)
    except AssetMissing as exc:
        folder = HUBERT_HF_WEIGHTS.rsplit("/", 1)[0]
        raise AssetMissing(f"{exc.message} (a Hugging Face folder {folder}/ there would also do)") from None
    return load_fairseq_checkpoint(assets.path(HUBERT_FAIRSEQ))  # it appeared in the meantime


def load_content_encoder(
    version: str,
    *,
    assets: AssetStore,
    device: str = "cpu",
    half: bool | None = None,
    max_batch_seconds: float | None = None,
    pad_tolerance: float = DEFAULT_PAD_TOLERANCE,
) -> ContentEncoder:
    """The encoder for `version` ("v2" or "v1"); random stand-in weights with `--assets none`
    (full-size HuBERT-base with random weights for `AssetStore.random_full()`).

    `half` defaults to True on CUDA. `max_batch_seconds` bounds the padded audio per forward pass
    (default 120 s on CUDA, 30 s on CPU); `pad_tolerance`: see `plan_batches`."""
    if version not in FEATURE_DIMS:
        raise ConfigError(f"version must be v2 or v1, got {version!r}")
    wanted_layer = FEATURE_LAYERS[version]
    if assets.random_init:
        assets.warn_if_random()
        model = random_full_size() if assets.full_size_random else random_stand_in()
        output_layer = min(wanted_layer, model.arch.num_layers)  # the stand-in is shallower
    else:
        loaded = _load_weights(assets)
        if loaded.unused_keys:
            log.info("content encoder: left unused training-only weights %s", ", ".join(loaded.unused_keys))
        model = loaded.model
        output_layer = wanted_layer
        _check_fits(model, version, output_layer)
    on_cuda = device.startswith("cuda")
    model.to(device)
    seconds = max_batch_seconds or DEFAULT_BATCH_SECONDS["cuda" if on_cuda else "cpu"]
    return ContentEncoder(
        model,
        version=version,
        output_layer=output_layer,
        device=device,
        half=on_cuda if half is None else (half and on_cuda),
        max_batch_samples=int(seconds * FEATURE_SAMPLE_RATE),
        pad_tolerance=pad_tolerance,
    )


def _check_fits(model: HubertModel, version: str, output_layer: int) -> None:
    arch = model.arch
    if arch.num_layers < output_layer:
        raise AssetCorrupt(
            f"content encoder has {arch.num_layers} layers; {version} reads layer {output_layer}"
        )
    if arch.hop != FEATURE_HOP or arch.window != FEATURE_WINDOW:
        raise AssetCorrupt(
            f"content encoder hop/window {arch.hop}/{arch.window}, expected {FEATURE_HOP}/{FEATURE_WINDOW}"
        )
    width = arch.embed_dim if version == "v2" else arch.final_proj_dim
    if width != FEATURE_DIMS[version]:
        raise AssetCorrupt(
            f"content encoder gives {width}-d {version} features, expected {FEATURE_DIMS[version]}"
        )
