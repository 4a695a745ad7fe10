"""RVC's generator and discriminators, spectrograms, losses and weight files.

Importing this package imports torch; nothing is built until a function is called.
"""

from rvc_core.models.audio import linear_spectrogram, mel_from_linear, mel_spectrogram
from rvc_core.models.commons import slice_segments
from rvc_core.models.discriminator import MultiPeriodDiscriminator, build_discriminator
from rvc_core.models.generator import Generator, GeneratorOutput, build_generator
from rvc_core.models.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    kl_loss,
)
from rvc_core.models.presets import PRESETS
from rvc_core.models.state_dict import (
    export_generator_weights,
    from_legacy_state_dict,
    load_pretrained,
    to_legacy_state_dict,
)

__all__ = [
    "PRESETS",
    "Generator",
    "GeneratorOutput",
    "MultiPeriodDiscriminator",
    "build_discriminator",
    "build_generator",
    "discriminator_loss",
    "export_generator_weights",
    "feature_matching_loss",
    "from_legacy_state_dict",
    "generator_adversarial_loss",
    "kl_loss",
    "linear_spectrogram",
    "load_pretrained",
    "mel_from_linear",
    "mel_spectrogram",
    "slice_segments",
    "to_legacy_state_dict",
]
