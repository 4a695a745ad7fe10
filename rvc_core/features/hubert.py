"""HuBERT-base / ContentVec on torchaudio's wav2vec2 architecture: its shape, building it, running it.

The weights come from `rvc_core.features.weights`; nothing here downloads anything. torch and
torchaudio are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torchaudio.models import Wav2Vec2Model

ConvLayer = tuple[int, int, int]  # (out channels, kernel, stride), kernel and stride in samples
STANDARD_CONV_LAYERS: tuple[ConvLayer, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class HubertArch:
    """Hyper-parameters of a HuBERT-family encoder; the defaults are HuBERT-base (and ContentVec)."""

    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ff_dim: int = 3072
    conv_layers: tuple[ConvLayer, ...] = STANDARD_CONV_LAYERS
    extractor_mode: str = "group_norm"  # or "layer_norm"
    conv_bias: bool = False
    pos_conv_kernel: int = 128  # frames
    pos_conv_groups: int = 16
    layer_norm_first: bool = False  # HuBERT-base is post-norm
    layer_norm_eps: float = 1e-5
    final_proj_dim: int | None = 256  # the 768->256 projection v1 reads; None when the weights lack it

    @property
    def hop(self) -> int:
        """Input samples per output frame (320 at 16 kHz: 50 frames/s)."""
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop

    @property
    def window(self) -> int:
        """Input samples seen by one output frame (400 for HuBERT-base)."""
        span, jump = 1, 1
        for _, kernel, stride in self.conv_layers:
            span += (kernel - 1) * jump
            jump *= stride
        return span


# A stand-in for `--assets none`: the real convolution strides (identical frame counts) and the real
# 768/256 output widths (real downstream shapes), but narrow convolutions and only two layers.
RANDOM_STAND_IN = HubertArch(
    num_layers=2,
    ff_dim=256,
    conv_layers=tuple((32, kernel, stride) for _, kernel, stride in STANDARD_CONV_LAYERS),
    pos_conv_kernel=16,
)


@dataclass
class HubertModel:
    """A torchaudio wav2vec2 network plus HuBERT's optional `final_proj`, in eval mode."""

    arch: HubertArch
    network: Wav2Vec2Model
    final_proj: torch.nn.Linear | None

    def to(self, device: str | torch.device) -> HubertModel:
        self.network.to(device)
        if self.final_proj is not None:
            self.final_proj.to(device)
        return self

    def layer_output(
        self, waveforms: torch.Tensor, layer: int, lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Output of transformer layer `layer` (1-based, like fairseq's `output_layer` and HF's
        `hidden_states[layer]`) for float waveforms (batch, samples): (batch, frames, embed_dim).
        No padding mask: RVC runs with an all-false mask, which is the same as none.

        `lengths` (samples per row, zero padding after them) makes each row's valid frames what
        the row alone would give: see `_padded_layer_output`. Frames past a row's own are junk."""
        if not 1 <= layer <= self.arch.num_layers:
            raise ValueError(f"layer must be in 1..{self.arch.num_layers}, got {layer}")
        if lengths is not None:
            return self._padded_layer_output(waveforms, layer, lengths)
        outputs, _ = self.network.extract_features(waveforms, None, num_layers=layer)
        return outputs[layer - 1]

    def _padded_layer_output(
        self, waveforms: torch.Tensor, layer: int, lengths: Sequence[int]
    ) -> torch.Tensor:
        """Rows of different lengths in one transformer batch, each exactly as if run alone. The
        convolutional front end runs per row on the row's own samples, because its GroupNorm
        normalises over the whole time axis (padding would shift it); batching it gains nothing on
        CPU anyway. The transformer runs batched with frame lengths: torchaudio then zeroes the
        padded frames before the positional convolution (which, alone, sees zero padding there
        too) and masks them out of attention, the only places where frames mix."""
        import torch

        rows = [
            self.network.feature_extractor(waveforms[i : i + 1, :n], None)[0][0]
            for i, n in enumerate(lengths)
        ]
        frames = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        counts = torch.tensor([len(r) for r in rows], device=frames.device)
        return self.network.encoder.extract_features(frames, counts, num_layers=layer)[layer - 1]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_proj is None:
            raise ValueError("these weights have no final_proj (768->256), which v1 features need")
        return self.final_proj(hidden)


def build_hubert(arch: HubertArch) -> HubertModel:
    """An untrained network of shape `arch` (PyTorch's default initialisation), in eval mode."""
    import torch
    from torchaudio.models import wav2vec2_model

    network = wav2vec2_model(
        extractor_mode=arch.extractor_mode,
        extractor_conv_layer_config=list(arch.conv_layers),
        extractor_conv_bias=arch.conv_bias,
        encoder_embed_dim=arch.embed_dim,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=arch.pos_conv_kernel,
        encoder_pos_conv_groups=arch.pos_conv_groups,
        encoder_num_layers=arch.num_layers,
        encoder_num_heads=arch.num_heads,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=arch.ff_dim,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=arch.layer_norm_first,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    # torchaudio fixes eps at 1e-5; a checkpoint may declare another value.
    for module in network.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = arch.layer_norm_eps
    final_proj = None
    if arch.final_proj_dim is not None:
        final_proj = torch.nn.Linear(arch.embed_dim, arch.final_proj_dim)
    network.eval()
    if final_proj is not None:
        final_proj.eval()
    return HubertModel(arch=arch, network=network, final_proj=final_proj)


def random_full_size(seed: int = 0) -> HubertModel:
    """HuBERT-base at full size with seeded random weights: for speed and memory benchmarks."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_hubert(HubertArch())


def random_stand_in(seed: int = 0) -> HubertModel:
    """The `--assets none` encoder: seeded, so two runs give the same (meaningless) features."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_hubert(RANDOM_STAND_IN)
