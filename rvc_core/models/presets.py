"""Model sizes: "full" is RVC's architecture exactly (pretrained weights load into it); "tiny" has the
same structure and code paths with far smaller widths, for tests and quick CPU runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rvc_core.errors import ConfigError
from rvc_core.spec import MODEL_SHAPES, PRESETS, SPECTROGRAMS, TRAINING_SEGMENT_SAMPLES, VERSIONS, ModelShape

# Periods of the period discriminators, per RVC version.
DISCRIMINATOR_PERIODS: dict[str, tuple[int, ...]] = {
    "v1": (2, 3, 5, 7, 11, 17),
    "v2": (2, 3, 5, 7, 11, 17, 23, 37),
}


@dataclass(frozen=True)
class GeneratorArch:
    """Everything that sizes the generator: the exported 18-item config (`shape`) plus the numbers RVC
    hard-codes in its classes (not in the config, so a loader rebuilds them from its own defaults)."""

    shape: ModelShape
    posterior_layers: int = 16  # WaveNet layers of enc_q (not exported, so free to shrink)
    flow_layers: int = 3  # WaveNet layers per coupling (hard-coded in RVC: keep 3 for loadable exports)
    n_flows: int = 4  # couplings in the flow (hard-coded in RVC: keep 4)
    wavenet_kernel_size: int = 5  # enc_q and flow WaveNets (hard-coded in RVC: keep 5)
    attention_window: int = 10  # relative-position window of the text encoder (hard-coded in RVC)


@dataclass(frozen=True)
class DiscriminatorArch:
    periods: tuple[int, ...]
    scale_channels: tuple[int, ...]  # output channels of the scale discriminator's 6 convolutions
    scale_groups: tuple[int, ...]  # their groups
    period_channels: tuple[int, ...]  # output channels of each period discriminator's 5 convolutions


_FULL_SCALE_CHANNELS = (16, 64, 256, 1024, 1024, 1024)
_FULL_SCALE_GROUPS = (1, 4, 16, 64, 256, 1)
_FULL_PERIOD_CHANNELS = (32, 128, 512, 1024, 1024)

_TINY_SCALE_CHANNELS = (2, 4, 8, 16, 16, 16)
_TINY_SCALE_GROUPS = (1, 2, 4, 8, 8, 1)
_TINY_PERIOD_CHANNELS = (2, 4, 8, 16, 16)


def _check(version: str, preset: str) -> None:
    if version not in VERSIONS:
        raise ConfigError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")


def generator_arch(version: str, sample_rate: int, preset: str = "full") -> GeneratorArch:
    _check(version, preset)
    shape = MODEL_SHAPES.get((version, sample_rate))
    if shape is None:
        rates = sorted({sr for v, sr in MODEL_SHAPES if v == version})
        raise ConfigError(f"sample_rate for {version} must be one of {rates}, got {sample_rate}")
    if preset == "full":
        return GeneratorArch(shape=shape)
    tiny = dataclasses.replace(
        shape,
        inter_channels=32,
        hidden_channels=32,
        filter_channels=64,
        n_layers=2,
        upsample_initial_channel=32,
        gin_channels=32,
        # One residual block per upsampling stage instead of three: the last stages run at the full
        # sample rate and dominate CPU time.
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3, 5),),
    )
    return GeneratorArch(shape=tiny, posterior_layers=4)


def discriminator_arch(version: str, preset: str = "full") -> DiscriminatorArch:
    _check(version, preset)
    periods = DISCRIMINATOR_PERIODS[version]
    if preset == "full":
        return DiscriminatorArch(periods, _FULL_SCALE_CHANNELS, _FULL_SCALE_GROUPS, _FULL_PERIOD_CHANNELS)
    return DiscriminatorArch(periods, _TINY_SCALE_CHANNELS, _TINY_SCALE_GROUPS, _TINY_PERIOD_CHANNELS)


def segment_frames(version: str, sample_rate: int) -> int:
    """The training window in spectrogram frames (RVC's `segment_size // hop_length`)."""
    return TRAINING_SEGMENT_SAMPLES[(version, sample_rate)] // SPECTROGRAMS[sample_rate].hop_length
