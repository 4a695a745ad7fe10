"""Factories for content-encoder tests: tiny seeded HuBERT networks written out in the two layouts
users have (Hugging Face folder, fairseq checkpoint).

The key names below are written out by hand from the original projects' module trees (transformers'
`modeling_hubert.py`, fairseq's `hubert.py`/`wav2vec2.py`), independently of the translation tables
in `rvc_core.features.weights`, so a wrong row in those tables makes a round trip fail.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from rvc_core.features.hubert import STANDARD_CONV_LAYERS, HubertArch, HubertModel, build_hubert


def tiny_arch(**changes: object) -> HubertArch:
    """12 narrow layers: layers 9 and 12 exist, the strides are the real ones, it runs in milliseconds."""
    arch = HubertArch(
        embed_dim=32,
        num_layers=12,
        num_heads=4,
        ff_dim=48,
        conv_layers=tuple((16, kernel, stride) for _, kernel, stride in STANDARD_CONV_LAYERS),
        pos_conv_kernel=8,
        pos_conv_groups=4,
        final_proj_dim=8,
    )
    return replace(arch, **changes)


def seeded_hubert(arch: HubertArch, seed: int = 0) -> HubertModel:
    """A network whose every parameter is perturbed, so norms are not identities and swapping any
    two weights of the same shape changes the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_hubert(arch)
        with torch.no_grad():
            for parameter in [
                *model.network.parameters(),
                *(model.final_proj.parameters() if model.final_proj else []),
            ]:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _network(model: HubertModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def _pos_conv(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prefix = "encoder.transformer.pos_conv_embed.conv."
    return (
        state[prefix + "parametrizations.weight.original0"],
        state[prefix + "parametrizations.weight.original1"],
        state[prefix + "bias"],
    )


# --- Hugging Face layout ---------------------------------------------------------------------------
def hf_state_dict(model: HubertModel, *, weight_norm_names: str = "legacy") -> dict[str, torch.Tensor]:
    """`HubertModel` names (plus ContentVec's `final_proj`). `weight_norm_names`: "legacy" for
    weight_g/weight_v, "parametrized" for newer transformers' parametrizations.weight.original0/1."""
    src = _network(model)
    out: dict[str, torch.Tensor] = {}
    for i in range(len(model.arch.conv_layers)):
        out[f"feature_extractor.conv_layers.{i}.conv.weight"] = src[
            f"feature_extractor.conv_layers.{i}.conv.weight"
        ]
    for part in ("weight", "bias"):
        out[f"feature_extractor.conv_layers.0.layer_norm.{part}"] = src[
            f"feature_extractor.conv_layers.0.layer_norm.{part}"
        ]
        out[f"feature_projection.layer_norm.{part}"] = src[f"encoder.feature_projection.layer_norm.{part}"]
        out[f"feature_projection.projection.{part}"] = src[f"encoder.feature_projection.projection.{part}"]
        out[f"encoder.layer_norm.{part}"] = src[f"encoder.transformer.layer_norm.{part}"]
    g, v, bias = _pos_conv(src)
    if weight_norm_names == "legacy":
        out["encoder.pos_conv_embed.conv.weight_g"], out["encoder.pos_conv_embed.conv.weight_v"] = g, v
    else:
        out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = g
        out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = v
    out["encoder.pos_conv_embed.conv.bias"] = bias
    for layer in range(model.arch.num_layers):
        ours = f"encoder.transformer.layers.{layer}."
        theirs = f"encoder.layers.{layer}."
        for part in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[f"{theirs}attention.{proj}.{part}"] = src[f"{ours}attention.{proj}.{part}"]
            out[f"{theirs}layer_norm.{part}"] = src[f"{ours}layer_norm.{part}"]
            out[f"{theirs}feed_forward.intermediate_dense.{part}"] = src[
                f"{ours}feed_forward.intermediate_dense.{part}"
            ]
            out[f"{theirs}feed_forward.output_dense.{part}"] = src[f"{ours}feed_forward.output_dense.{part}"]
            out[f"{theirs}final_layer_norm.{part}"] = src[f"{ours}final_layer_norm.{part}"]
    if model.final_proj is not None:
        out["final_proj.weight"] = model.final_proj.weight.detach().clone()
        out["final_proj.bias"] = model.final_proj.bias.detach().clone()
    # Present in HF checkpoints trained with masking; unused at inference.
    out["masked_spec_embed"] = torch.rand(model.arch.embed_dim)
    return out


def hf_config(arch: HubertArch) -> dict[str, object]:
    return {
        "architectures": ["HubertModelWithFinalProj"],
        "model_type": "hubert",
        "hidden_size": arch.embed_dim,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "intermediate_size": arch.ff_dim,
        "hidden_act": "gelu",
        "conv_dim": [c for c, _, _ in arch.conv_layers],
        "conv_kernel": [k for _, k, _ in arch.conv_layers],
        "conv_stride": [s for _, _, s in arch.conv_layers],
        "conv_bias": arch.conv_bias,
        "feat_extract_norm": "group",
        "feat_extract_activation": "gelu",
        "num_conv_pos_embeddings": arch.pos_conv_kernel,
        "num_conv_pos_embedding_groups": arch.pos_conv_groups,
        "do_stable_layer_norm": False,
        "feat_proj_layer_norm": True,
        "layer_norm_eps": 1e-5,
        "classifier_proj_size": arch.final_proj_dim,
    }


def write_hf_folder(
    model: HubertModel,
    folder: Path,
    *,
    weight_norm_names: str = "legacy",
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(model.arch), indent=2))
    torch.save(
        state if state is not None else hf_state_dict(model, weight_norm_names=weight_norm_names),
        folder / "pytorch_model.bin",
    )
    return folder


# --- fairseq layout --------------------------------------------------------------------------------
def fairseq_state_dict(model: HubertModel) -> dict[str, torch.Tensor]:
    """fairseq `HubertModel` names ("default" extractor mode: GroupNorm at index 2 of block 0)."""
    src = _network(model)
    out: dict[str, torch.Tensor] = {}
    for i in range(len(model.arch.conv_layers)):
        out[f"feature_extractor.conv_layers.{i}.0.weight"] = src[
            f"feature_extractor.conv_layers.{i}.conv.weight"
        ]
    for part in ("weight", "bias"):
        out[f"feature_extractor.conv_layers.0.2.{part}"] = src[
            f"feature_extractor.conv_layers.0.layer_norm.{part}"
        ]
        out[f"layer_norm.{part}"] = src[f"encoder.feature_projection.layer_norm.{part}"]
        out[f"post_extract_proj.{part}"] = src[f"encoder.feature_projection.projection.{part}"]
        out[f"encoder.layer_norm.{part}"] = src[f"encoder.transformer.layer_norm.{part}"]
    out["encoder.pos_conv.0.weight_g"], out["encoder.pos_conv.0.weight_v"], out["encoder.pos_conv.0.bias"] = (
        _pos_conv(src)
    )
    for layer in range(model.arch.num_layers):
        ours = f"encoder.transformer.layers.{layer}."
        theirs = f"encoder.layers.{layer}."
        for part in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[f"{theirs}self_attn.{proj}.{part}"] = src[f"{ours}attention.{proj}.{part}"]
            out[f"{theirs}self_attn_layer_norm.{part}"] = src[f"{ours}layer_norm.{part}"]
            out[f"{theirs}fc1.{part}"] = src[f"{ours}feed_forward.intermediate_dense.{part}"]
            out[f"{theirs}fc2.{part}"] = src[f"{ours}feed_forward.output_dense.{part}"]
            out[f"{theirs}final_layer_norm.{part}"] = src[f"{ours}final_layer_norm.{part}"]
    if model.final_proj is not None:
        out["final_proj.weight"] = model.final_proj.weight.detach().clone()
        out["final_proj.bias"] = model.final_proj.bias.detach().clone()
    # Training-only: masked-frame embedding and cluster-label embeddings.
    out["mask_emb"] = torch.rand(model.arch.embed_dim)
    out["label_embs_concat"] = torch.rand(504, model.arch.final_proj_dim or 256)
    return out


class _FakeFairseqDictionary:
    """Pickles under fairseq's name, like the task dictionaries inside real checkpoints."""

    def __init__(self) -> None:
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>", "0", "1"]
        self.count = [1, 1, 1, 1, 10, 12]
        self.indices = {s: i for i, s in enumerate(self.symbols)}


@contextmanager
def _importable_as(obj: type, module_name: str, qualname: str) -> Iterator[None]:
    """Makes `obj` picklable as `module_name.qualname` without installing that package."""
    parts = module_name.split(".")
    created = []
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            created.append(name)
    original = (obj.__module__, obj.__qualname__)
    obj.__module__, obj.__qualname__ = module_name, qualname
    setattr(sys.modules[module_name], qualname, obj)
    try:
        yield
    finally:
        obj.__module__, obj.__qualname__ = original
        for name in created:
            del sys.modules[name]


def write_fairseq_checkpoint(
    model: HubertModel,
    path: Path,
    *,
    legacy_format: bool = False,
    dtype: torch.dtype = torch.float32,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A checkpoint in fairseq's layout: `cfg` as a plain dict, the state dict under `model`, and a
    pickled fairseq Dictionary object like the real files carry."""
    arch = model.arch
    weights = state if state is not None else fairseq_state_dict(model)
    checkpoint = {
        "args": None,
        "cfg": {
            "model": {
                "_name": "hubert",
                "extractor_mode": "default",
                "encoder_layers": arch.num_layers,
                "encoder_embed_dim": arch.embed_dim,
                "encoder_ffn_embed_dim": arch.ff_dim,
                "encoder_attention_heads": arch.num_heads,
                "layer_norm_first": arch.layer_norm_first,
                "conv_pos": arch.pos_conv_kernel,
                "conv_pos_groups": arch.pos_conv_groups,
                "final_dim": arch.final_proj_dim,
            },
            "task": {"_name": "hubert_pretraining", "sample_rate": 16000, "normalize": False},
        },
        "model": {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
        "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 400000}],
        "extra_state": {"epoch": 1},
        "task_state": {"dictionaries": [_FakeFairseqDictionary()]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with _importable_as(_FakeFairseqDictionary, "fairseq.data.dictionary", "Dictionary"):
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def reference_layer(model: HubertModel, waveforms: torch.Tensor, layer: int) -> torch.Tensor:
    """The source network's output after `layer` transformer layers, asked of torchaudio directly."""
    with torch.inference_mode():
        outputs, _ = model.network.extract_features(waveforms, num_layers=layer)
        return outputs[-1]
