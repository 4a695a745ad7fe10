"""RVC's fixed numbers (shared/spec/RVC.md), in one place, typed and with units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Version = Literal["v1", "v2"]
F0Method = Literal["rmvpe", "crepe", "crepe-tiny", "pm", "harvest"]

SAMPLE_RATES: tuple[int, ...] = (32000, 40000, 48000)  # Hz
VERSIONS: tuple[str, ...] = ("v2", "v1")
F0_METHODS: tuple[str, ...] = ("rmvpe", "crepe", "crepe-tiny", "pm", "harvest")
# Network sizes: "full" is RVC's; "tiny" keeps the architecture and names with small widths (CPU tests).
PRESETS: tuple[str, ...] = ("full", "tiny")

# Pitch and features run on a 16 kHz copy; pitch has hop 160 (100 frames/s), features 320 (50 frames/s).
FEATURE_SAMPLE_RATE = 16000  # Hz
PITCH_HOP = 160  # samples at 16 kHz
FEATURE_HOP = 320  # samples at 16 kHz
FEATURE_WINDOW = 400  # samples at 16 kHz
F0_MIN = 50.0  # Hz
F0_MAX = 1100.0  # Hz
PITCH_BINS = 256  # rows of emb_pitch; ids 1..255
SPEAKER_SLOTS = 109  # rows of the generator's speaker embedding (spk_embed_dim): speaker ids 0..108

# Preprocessing (RVC WebUI's numbers).
HIGHPASS_HZ = 48.0
HIGHPASS_ORDER = 5
SLICER_THRESHOLD_DB = -42.0
SLICER_MIN_LENGTH_MS = 1500
SLICER_MIN_INTERVAL_MS = 400
SLICER_HOP_MS = 15
SLICER_MAX_SILENCE_KEPT_MS = 500
SEGMENT_OVERLAP_SECONDS = 0.3
NORMALISE_MAX_PEAK = 2.5
NORMALISE_ALPHA = 0.75
NORMALISE_TARGET = 0.9
# RVC's batch sampler silently drops chunks outside these bounds; we report them instead.
MIN_TRAINABLE_SECONDS = 0.75
MAX_TRAINABLE_SECONDS = 6.75


@dataclass(frozen=True)
class ModelShape:
    """The generator's hyper-parameters: exactly the 18-item `config` list of the exported `.pth`."""

    spec_channels: int
    segment_frames: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sampling_rate: int  # Hz

    def as_config_list(self) -> list[object]:
        """The 18-item list RVC and Applio read, in their order, as plain Python types."""
        return [
            self.spec_channels,
            self.segment_frames,
            self.inter_channels,
            self.hidden_channels,
            self.filter_channels,
            self.n_heads,
            self.n_layers,
            self.kernel_size,
            int(self.p_dropout) if float(self.p_dropout).is_integer() else self.p_dropout,
            self.resblock,
            list(self.resblock_kernel_sizes),
            [list(d) for d in self.resblock_dilation_sizes],
            list(self.upsample_rates),
            self.upsample_initial_channel,
            list(self.upsample_kernel_sizes),
            self.spk_embed_dim,
            self.gin_channels,
            self.sampling_rate,
        ]

    @property
    def hop_length(self) -> int:
        """Samples per spectrogram frame at `sampling_rate` (the product of the upsample rates)."""
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop


def _shape(
    spec_channels: int, upsample_rates: tuple[int, ...], upsample_kernels: tuple[int, ...], sr: int
) -> ModelShape:
    return ModelShape(
        spec_channels=spec_channels,
        segment_frames=32,
        inter_channels=192,
        hidden_channels=192,
        filter_channels=768,
        n_heads=2,
        n_layers=6,
        kernel_size=3,
        p_dropout=0,
        resblock="1",
        resblock_kernel_sizes=(3, 7, 11),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        upsample_rates=upsample_rates,
        upsample_initial_channel=512,
        upsample_kernel_sizes=upsample_kernels,
        spk_embed_dim=SPEAKER_SLOTS,
        gin_channels=256,
        sampling_rate=sr,
    )


MODEL_SHAPES: dict[tuple[str, int], ModelShape] = {
    ("v2", 40000): _shape(1025, (10, 10, 2, 2), (16, 16, 4, 4), 40000),
    ("v1", 40000): _shape(1025, (10, 10, 2, 2), (16, 16, 4, 4), 40000),
    ("v2", 48000): _shape(1025, (12, 10, 2, 2), (24, 20, 4, 4), 48000),
    ("v1", 48000): _shape(1025, (10, 6, 2, 2, 2), (16, 16, 4, 4, 4), 48000),
    ("v2", 32000): _shape(513, (10, 8, 2, 2), (20, 16, 4, 4), 32000),
    ("v1", 32000): _shape(513, (10, 4, 2, 2, 2), (16, 16, 4, 4, 4), 32000),
}


@dataclass(frozen=True)
class SpectrogramSpec:
    n_fft: int
    hop_length: int  # samples
    win_length: int
    n_mels: int
    sample_rate: int  # Hz


SPECTROGRAMS: dict[int, SpectrogramSpec] = {
    40000: SpectrogramSpec(n_fft=2048, hop_length=400, win_length=2048, n_mels=125, sample_rate=40000),
    48000: SpectrogramSpec(n_fft=2048, hop_length=480, win_length=2048, n_mels=128, sample_rate=48000),
    32000: SpectrogramSpec(n_fft=1024, hop_length=320, win_length=1024, n_mels=80, sample_rate=32000),
}

FEATURE_DIMS: dict[str, int] = {"v2": 768, "v1": 256}
FEATURE_LAYERS: dict[str, int] = {"v2": 12, "v1": 9}


def sample_rate_label(sample_rate: int) -> str:
    """RVC's string form of a sample rate: 40000 -> "40k"."""
    return f"{sample_rate // 1000}k"


# Training window in samples at the target rate (RVC's `segment_size`), per version and rate.
TRAINING_SEGMENT_SAMPLES: dict[tuple[str, int], int] = {
    ("v2", 40000): 12800,
    ("v1", 40000): 12800,
    ("v2", 48000): 17280,
    ("v1", 48000): 11520,
    ("v2", 32000): 12800,
    ("v1", 32000): 12800,
}
