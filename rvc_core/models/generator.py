"""The RVC synthesizer (VITS-style): RVC's `SynthesizerTrnMs768NSFsid` (v2) / `...256NSFsid` (v1),
and their `_nono` variants without pitch when `f0=False`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rvc_core.errors import ConfigError
from rvc_core.models.commons import rand_slice_segments, slice_segments
from rvc_core.models.encoders import PosteriorEncoder, TextEncoder
from rvc_core.models.modules import ResidualCouplingBlock
from rvc_core.models.nsf import HiFiGanDecoder
from rvc_core.models.presets import GeneratorArch, generator_arch, segment_frames
from rvc_core.spec import FEATURE_DIMS, ModelShape

INFER_NOISE_SCALE = 0.66666  # RVC's prior sampling temperature at inference


@dataclass
class GeneratorOutput:
    """What one training forward pass returns; [B, C, T] tensors are at frame rate unless noted."""

    audio: Tensor  # [B, 1, segment_frames * hop] generated window
    ids_slice: Tensor  # [B] long, start frame of each item's random window
    x_mask: Tensor  # [B, 1, T] valid frames of the content features
    z_mask: Tensor  # [B, 1, T] valid frames of the spectrogram
    z: Tensor  # [B, inter, T] posterior sample
    z_p: Tensor  # [B, inter, T] the sample mapped through the flow
    m_p: Tensor  # [B, inter, T] prior mean
    logs_p: Tensor  # [B, inter, T] prior log-std
    m_q: Tensor  # [B, inter, T] posterior mean
    logs_q: Tensor  # [B, inter, T] posterior log-std


class Generator(nn.Module):
    """Parameter names and shapes equal RVC's files (after `state_dict.to_legacy_state_dict`)."""

    def __init__(self, arch: GeneratorArch, *, version: str, f0: bool, segment_frames: int) -> None:
        super().__init__()
        shape = arch.shape
        if shape.resblock != "1":
            raise ConfigError(f"only resblock '1' is supported, got {shape.resblock!r}")
        self.arch = arch
        self.shape: ModelShape = shape
        self.version = version
        self.f0 = f0
        self.sample_rate = shape.sampling_rate  # Hz
        self.hop_length = shape.hop_length  # samples per frame
        self.segment_frames = segment_frames
        self.enc_p = TextEncoder(
            FEATURE_DIMS[version],
            shape.inter_channels,
            shape.hidden_channels,
            shape.filter_channels,
            shape.n_heads,
            shape.n_layers,
            shape.kernel_size,
            float(shape.p_dropout),
            arch.attention_window,
            f0=f0,
        )
        self.dec = HiFiGanDecoder(
            shape.inter_channels,
            shape.resblock_kernel_sizes,
            shape.resblock_dilation_sizes,
            shape.upsample_rates,
            shape.upsample_initial_channel,
            shape.upsample_kernel_sizes,
            shape.gin_channels,
            shape.sampling_rate if f0 else None,
        )
        self.enc_q = PosteriorEncoder(
            shape.spec_channels,
            shape.inter_channels,
            shape.hidden_channels,
            arch.wavenet_kernel_size,
            arch.posterior_layers,
            shape.gin_channels,
        )
        self.flow = ResidualCouplingBlock(
            shape.inter_channels,
            shape.hidden_channels,
            arch.wavenet_kernel_size,
            arch.flow_layers,
            arch.n_flows,
            shape.gin_channels,
        )
        self.emb_g = nn.Embedding(shape.spk_embed_dim, shape.gin_channels)

    def _pitch_inputs(self, pitch: Tensor | None, pitchf: Tensor | None) -> None:
        if self.f0 and (pitch is None or pitchf is None):
            raise ValueError("a pitch-guided generator needs both pitch (ids) and pitchf (Hz)")

    def forward(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        spec: Tensor,
        spec_lengths: Tensor,
        sid: Tensor,
    ) -> GeneratorOutput:
        """phone [B, T, 768|256] (100 fps), pitch [B, T] ids 1..255, pitchf [B, T] Hz, spec [B, F, T]
        linear magnitude, lengths [B], sid [B]. Decodes one random window of `segment_frames` frames."""
        self._pitch_inputs(pitch, pitchf)
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.f0 else None, phone_lengths)
        z, m_q, logs_q, z_mask = self.enc_q(spec, spec_lengths, g)
        z_p = self.flow(z, z_mask, g)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.segment_frames)
        f0_slice = (
            slice_segments(pitchf, ids_slice, self.segment_frames) if self.f0 and pitchf is not None else None
        )
        audio = self.dec(z_slice, g, f0_slice)
        return GeneratorOutput(audio, ids_slice, x_mask, z_mask, z, z_p, m_p, logs_p, m_q, logs_q)

    def infer(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        sid: Tensor,
        *,
        noise_scale: float = INFER_NOISE_SCALE,
    ) -> Tensor:
        """Whole-utterance synthesis from the prior: audio [B, 1, T * hop]. No random slicing."""
        self._pitch_inputs(pitch, pitchf)
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.f0 else None, phone_lengths)
        z_p = (m_p + logs_p.exp() * torch.randn_like(m_p) * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g, reverse=True)
        return self.dec(z * x_mask, g, pitchf if self.f0 else None)


def build_generator(version: str, sample_rate: int, *, f0: bool = True, preset: str = "full") -> Generator:
    """RVC's generator for `version` ("v2"/"v1") at `sample_rate` Hz; "tiny" for tests and quick runs."""
    arch = generator_arch(version, sample_rate, preset)
    return Generator(arch, version=version, f0=f0, segment_frames=segment_frames(version, sample_rate))
