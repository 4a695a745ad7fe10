"""Pitch (f0) extraction on 16 kHz mono clips: rmvpe, crepe, crepe-tiny, pm, harvest (RVC.md §3).

Every method returns, per clip of n samples, `n // 160 + 1` float32 values in Hz (frame i centred
at i * 10 ms; 0 = unvoiced; values above 1100 Hz are kept, `coarse_pitch` clips them to 255).
Importing this package is cheap: torch, torchcrepe, parselmouth and pyworld load on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from rvc_core.errors import ConfigError
from rvc_core.pitch.base import PitchAssets, PitchExtractor, frame_count
from rvc_core.pitch.coarse import coarse_pitch

__all__ = ["METHODS", "PitchAssets", "PitchExtractor", "coarse_pitch", "frame_count", "load_pitch_extractor"]


def _rmvpe(assets: PitchAssets, device: str, batch_seconds: float) -> PitchExtractor:
    from rvc_core.pitch.rmvpe import load_rmvpe

    return load_rmvpe(assets, device=device, batch_seconds=batch_seconds)


def _crepe(assets: PitchAssets, device: str, batch_seconds: float) -> PitchExtractor:
    from rvc_core.pitch.crepe import CrepeExtractor

    return CrepeExtractor("full", device=device, batch_seconds=batch_seconds)


def _crepe_tiny(assets: PitchAssets, device: str, batch_seconds: float) -> PitchExtractor:
    from rvc_core.pitch.crepe import CrepeExtractor

    return CrepeExtractor("tiny", device=device, batch_seconds=batch_seconds)


def _pm(assets: PitchAssets, device: str, batch_seconds: float) -> PitchExtractor:
    from rvc_core.pitch.praat import PraatExtractor

    return PraatExtractor()


def _harvest(assets: PitchAssets, device: str, batch_seconds: float) -> PitchExtractor:
    from rvc_core.pitch.harvest import HarvestExtractor

    return HarvestExtractor()


# Method name -> factory. crepe's weights ship in its wheel, pm and harvest have none, so only
# rmvpe reads `assets`; pm and harvest run on the CPU whatever the device.
METHODS: dict[str, Callable[[PitchAssets, str, float], PitchExtractor]] = {
    "rmvpe": _rmvpe,
    "crepe": _crepe,
    "crepe-tiny": _crepe_tiny,
    "pm": _pm,
    "harvest": _harvest,
}


def load_pitch_extractor(
    method: str, *, assets: PitchAssets, device: str = "cpu", batch_seconds: float = 60.0
) -> PitchExtractor:
    """The extractor for `method`, with its weights loaded onto `device`. `batch_seconds` bounds
    the audio one network call holds (rmvpe, crepe)."""
    factory = METHODS.get(method)
    if factory is None:
        raise ConfigError(
            f"unknown pitch method {method!r}; choose one of {', '.join(METHODS)}", stage="pitch"
        )
    return factory(assets, device, batch_seconds)
