"""The decoder: HiFi-GAN upsampler, optionally driven by a neural-source-filter (NSF) sine source.

With a source (pitch-guided models) this is RVC's `GeneratorNSF`: a sine at the frame pitch is mixed
into every upsampling stage through `noise_convs`. Without it, RVC's plain HiFi-GAN `Generator`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_core.models.commons import LRELU_SLOPE, weight_normed
from rvc_core.models.modules import ResBlock1


class SineSource(nn.Module):
    """Harmonic sine excitation from frame-rate pitch, merged to one channel (RVC's `m_source`).

    Voiced samples: `sine_amp * sin(phase) + N(0, noise_std)`; unvoiced (f0 <= voiced_threshold):
    noise with std `sine_amp / 3`. Overtones (harmonic_num > 0) start at a random phase.

    Precision: the whole source, including the merge, runs in fp32 with autocast disabled. The phase
    is an accumulated sum over thousands of samples; in fp16/bf16 its rounding error grows to whole
    radians and the sine turns into noise. To keep even fp32 exact, the phase is accumulated per frame
    and wrapped to [0, 1) cycles before the per-sample ramp is added.
    """

    def __init__(
        self,
        sample_rate: int,  # Hz
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,  # Hz
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.harmonic_num = harmonic_num
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def excitation(self, f0: Tensor, upsample: int) -> Tensor:
        """f0 [B, T] Hz at frame rate -> [B, T*upsample, harmonic_num+1] fp32 excitation per harmonic."""
        b, t = f0.shape
        f0 = f0.float()
        harmonics = torch.arange(1, self.harmonic_num + 2, device=f0.device, dtype=torch.float32)
        cycles_per_sample = f0.unsqueeze(-1) * harmonics / self.sample_rate  # [B, T, H]
        cycles_per_frame = torch.frac(cycles_per_sample * upsample)
        frame_start = torch.frac(torch.cumsum(cycles_per_frame, dim=1) - cycles_per_frame)
        ramp = torch.arange(1, upsample + 1, device=f0.device, dtype=torch.float32).view(1, 1, upsample, 1)
        phase = frame_start.unsqueeze(2) + cycles_per_sample.unsqueeze(2) * ramp  # [B, T, upp, H]
        phase = phase.reshape(b, t * upsample, -1)
        if self.harmonic_num > 0:
            start = torch.rand(b, 1, self.harmonic_num + 1, device=f0.device)
            phase = phase + start * (harmonics > 1)
        sine = self.sine_amp * torch.sin(2 * math.pi * torch.frac(phase))
        voiced = (f0 > self.voiced_threshold).float().repeat_interleave(upsample, dim=1).unsqueeze(-1)
        noise_amp = voiced * self.noise_std + (1.0 - voiced) * (self.sine_amp / 3)
        return sine * voiced + noise_amp * torch.randn_like(sine)

    def forward(self, f0: Tensor, upsample: int) -> Tensor:
        """f0 [B, T] Hz -> merged source [B, 1, T*upsample], fp32."""
        with torch.autocast(device_type=f0.device.type, enabled=False):
            excitation = self.excitation(f0, upsample)
            merged = F.linear(excitation, self.l_linear.weight.float(), self.l_linear.bias.float())
            # [B, N, 1] -> [B, 1, N] by reshape, not transpose: a transposed one-channel tensor has
            # channels-last strides, which oneDNN then gives the noise convolutions' outputs too
            # (and which torch.compile's shape checks reject).
            return torch.tanh(merged).reshape(merged.shape[0], 1, -1)


class HiFiGanDecoder(nn.Module):
    """Latent frames [B, C, T] -> audio [B, 1, T*hop] in [-1, 1], conditioned on the speaker.

    `sample_rate=None` builds the decoder without NSF source (no-pitch models).
    """

    def __init__(
        self,
        in_channels: int,
        resblock_kernel_sizes: tuple[int, ...],
        resblock_dilation_sizes: tuple[tuple[int, ...], ...],
        upsample_rates: tuple[int, ...],
        upsample_initial_channel: int,
        upsample_kernel_sizes: tuple[int, ...],
        gin_channels: int,
        sample_rate: int | None,  # Hz; None: no NSF source
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.hop_length = math.prod(upsample_rates)
        self.conv_pre = nn.Conv1d(in_channels, upsample_initial_channel, 7, padding=3)
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            self.ups.append(
                weight_normed(
                    nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)
                )
            )
            channels //= 2
            for k, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(channels, k, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=False)

        self.m_source: SineSource | None = None
        self.noise_convs: nn.ModuleList | None = None
        if sample_rate is not None:
            self.m_source = SineSource(sample_rate)
            self.noise_convs = nn.ModuleList()
            for i in range(len(upsample_rates)):
                stage_channels = upsample_initial_channel // 2 ** (i + 1)
                # Brings the sample-rate source down to this stage's rate.
                stride = math.prod(upsample_rates[i + 1 :])
                if stride > 1:
                    conv = nn.Conv1d(1, stage_channels, 2 * stride, stride=stride, padding=stride // 2)
                else:
                    conv = nn.Conv1d(1, stage_channels, 1)
                self.noise_convs.append(conv)

    def forward(self, x: Tensor, g: Tensor, f0: Tensor | None = None) -> Tensor:
        """x [B, C, T], g [B, gin, 1], f0 [B, T] Hz (required with a source) -> [B, 1, T*hop]."""
        source: Tensor | None = None
        if self.m_source is not None:
            if f0 is None:
                raise ValueError("this decoder has an NSF source and needs f0")
            source = self.m_source(f0, self.hop_length).to(self.conv_pre.weight.dtype)
        x = self.conv_pre(x) + self.cond(g)
        last = len(self.ups) - 1
        for i in range(last):
            x = self._stage(i, x, source)
        # The last stage and the output conv run in fp32 even under autocast: the waveform feeds the
        # mel loss, and bf16's 8-bit mantissa alone puts a floor of ~18 (×45-weighted mel L1) under it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self._stage(last, x.float(), None if source is None else source.float())
            # RVC uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
            x = self.conv_post(F.leaky_relu(x))
            return torch.tanh(x)

    def _stage(self, i: int, x: Tensor, source: Tensor | None) -> Tensor:
        x = self.ups[i](F.leaky_relu(x, LRELU_SLOPE))
        if source is not None and self.noise_convs is not None:
            x = x + self.noise_convs[i](source)
        first = i * self.num_kernels
        mixed = self.resblocks[first](x)
        for block in self.resblocks[first + 1 : first + self.num_kernels]:
            mixed = mixed + block(x)
        return mixed / self.num_kernels
