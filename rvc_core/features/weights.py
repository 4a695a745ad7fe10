"""Loading HuBERT-base / ContentVec weights in the two formats users have, strictly, without their
original libraries (neither fairseq nor transformers is installed).

- Hugging Face folder: `config.json` + `pytorch_model.bin` (or `model.safetensors` when the
  `safetensors` package is importable) of a `HubertModel`, optionally with ContentVec's extra
  `final_proj` Linear (768->256), as shipped by RVC (`hubert_base/`) and Applio (`contentvec/`).
- fairseq checkpoint: `hubert_base.pt`, a pickled dict whose `"model"` is the state dict.

Key names are translated by two tables into one namespace: `network.<torchaudio key>` and
`final_proj.<weight|bias>`. Loading is strict: every weight of the network must be provided, and
every key in the file must either map or be on an explicit list of keys that are legitimately
unused at inference (training-only embeddings); anything else is an AssetCorrupt.

Trust model for the fairseq pickle: it is read with `torch.load(weights_only=True)`, which builds
only tensors and plain containers and refuses every other global. fairseq checkpoints also pickle a
few configuration objects (e.g. `fairseq.data.dictionary.Dictionary`); for names under `fairseq.` and
`omegaconf.` (and `argparse.Namespace`) an inert stand-in class is allowlisted that only stores the
pickled attributes: no code from the file runs and nothing is imported. A file that needs any other
global is refused.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_core.errors import AssetCorrupt, AssetMissing
from rvc_core.features.hubert import STANDARD_CONV_LAYERS, HubertArch, HubertModel, build_hubert

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_NET = "network."
_ATTN = "network.encoder.transformer"
_POS = f"{_ATTN}.pos_conv_embed.conv"

# fairseq `HubertModel` names -> ours. Regexes are matched against the whole key.
FAIRSEQ_KEYS: tuple[tuple[str, str], ...] = (
    (
        r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)",
        r"network.feature_extractor.conv_layers.\1.conv.\2",
    ),
    # "default" extractor mode: a GroupNorm after the first convolution only
    (
        r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)",
        r"network.feature_extractor.conv_layers.0.layer_norm.\1",
    ),
    # "layer_norm" extractor mode: Sequential(TransposeLast, LayerNorm, TransposeLast) in every block
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"network.feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"layer_norm\.(weight|bias)", r"network.encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"network.encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.bias", rf"{_POS}.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", rf"{_POS}.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", rf"{_POS}.parametrizations.weight.original1"),
    (
        r"encoder\.pos_conv\.0\.parametrizations\.weight\.original([01])",
        rf"{_POS}.parametrizations.weight.original\1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", rf"{_ATTN}.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(k|v|q|out)_proj\.(weight|bias)",
        rf"{_ATTN}.layers.\1.attention.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", rf"{_ATTN}.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", rf"{_ATTN}.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", rf"{_ATTN}.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", rf"{_ATTN}.layers.\1.final_layer_norm.\2"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
)
# Training-only parameters: the masked-frame embedding and the cluster-label embeddings.
FAIRSEQ_UNUSED: frozenset[str] = frozenset({"mask_emb", "label_embs_concat"})

# Hugging Face `HubertModel` names -> ours (after dropping a "hubert." prefix of task heads).
HF_KEYS: tuple[tuple[str, str], ...] = (
    (
        r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)",
        r"network.feature_extractor.conv_layers.\1.\2.\3",
    ),
    (
        r"feature_projection\.(layer_norm|projection)\.(weight|bias)",
        r"network.encoder.feature_projection.\1.\2",
    ),
    (r"encoder\.pos_conv_embed\.conv\.bias", rf"{_POS}.bias"),
    (r"encoder\.pos_conv_embed\.conv\.weight_g", rf"{_POS}.parametrizations.weight.original0"),
    (r"encoder\.pos_conv_embed\.conv\.weight_v", rf"{_POS}.parametrizations.weight.original1"),
    (
        r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original([01])",
        rf"{_POS}.parametrizations.weight.original\1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", rf"{_ATTN}.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.attention\.(k|v|q|out)_proj\.(weight|bias)",
        rf"{_ATTN}.layers.\1.attention.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(weight|bias)", rf"{_ATTN}.layers.\1.\2.\3"),
    (
        r"encoder\.layers\.(\d+)\.feed_forward\.(intermediate_dense|output_dense)\.(weight|bias)",
        rf"{_ATTN}.layers.\1.feed_forward.\2.\3",
    ),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
)
HF_UNUSED: frozenset[str] = frozenset({"masked_spec_embed"})

# Pickled configuration objects of fairseq checkpoints; they get an inert stand-in (see module doc).
_INERT_PREFIXES = ("fairseq.", "omegaconf.")
_INERT_NAMES = frozenset({"argparse.Namespace"})
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


@dataclass
class LoadedWeights:
    """A loaded encoder and the file keys that were deliberately left unused."""

    model: HubertModel
    unused_keys: tuple[str, ...] = field(default_factory=tuple)


def translate_keys(
    state: Mapping[str, torch.Tensor],
    rules: tuple[tuple[str, str], ...],
    unused: frozenset[str],
    source: str,
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Renames every key by `rules`; returns the renamed dict and the allowlisted unused keys.
    An unknown key, or two keys landing on one name, is an AssetCorrupt naming them."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    renamed: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key in unused:
            ignored.append(key)
            continue
        for pattern, target in compiled:
            match = pattern.fullmatch(key)
            if match:
                new_key = match.expand(target)
                if new_key in renamed:
                    raise AssetCorrupt(f"{source}: two weights map to {new_key} (one is {key})")
                renamed[new_key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise AssetCorrupt(
            f"{source}: unexpected weights {_some(unknown)}; is this a HuBERT-base/ContentVec file?"
        )
    return renamed, tuple(ignored)


def load_translated(arch: HubertArch, weights: Mapping[str, torch.Tensor], source: str) -> HubertModel:
    """Builds `arch` and loads `weights` (our namespace) strictly; shape or name gaps raise AssetCorrupt."""
    model = build_hubert(arch)
    network_part = {k[len(_NET) :]: v for k, v in weights.items() if k.startswith(_NET)}
    proj_part = {k[len("final_proj.") :]: v for k, v in weights.items() if k.startswith("final_proj.")}
    expected = set(model.network.state_dict())
    missing = sorted(expected - set(network_part))
    surplus = sorted(set(network_part) - expected)
    if missing or surplus:
        raise AssetCorrupt(
            f"{source}: weights do not fit a HuBERT network of {arch.num_layers} layers "
            f"(missing {_some(missing)}; not in the network {_some(surplus)})"
        )
    try:
        model.network.load_state_dict(network_part, strict=True)
        if model.final_proj is not None:
            model.final_proj.load_state_dict(proj_part, strict=True)
    except RuntimeError as exc:
        raise AssetCorrupt(f"{source}: weights have the wrong shapes: {exc}") from exc
    return model


def _some(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _count_layers(weights: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in weights if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _conv_layers_from_weights(
    weights: Mapping[str, torch.Tensor], source: str
) -> tuple[tuple[int, int, int], ...]:
    """Channels and kernels come from the weights; strides are not stored, so only the standard
    wav2vec2/HuBERT layout (kernels 10,3,3,3,3,2,2 with strides 5,2,2,2,2,2,2) is accepted."""
    count = _count_layers(weights, "network.feature_extractor.conv_layers.")
    shapes = [weights[f"network.feature_extractor.conv_layers.{i}.conv.weight"].shape for i in range(count)]
    kernels = tuple(int(shape[-1]) for shape in shapes)
    standard_kernels = tuple(kernel for _, kernel, _ in STANDARD_CONV_LAYERS)
    if kernels != standard_kernels:
        raise AssetCorrupt(f"{source}: convolution kernels {kernels} are not HuBERT's {standard_kernels}")
    return tuple(
        (int(shape[0]), kernel, stride)
        for shape, (_, kernel, stride) in zip(shapes, STANDARD_CONV_LAYERS, strict=True)
    )


def _final_proj_dim(weights: Mapping[str, torch.Tensor]) -> int | None:
    weight = weights.get("final_proj.weight")
    return None if weight is None else int(weight.shape[0])


# --- Hugging Face folder ---------------------------------------------------------------------------
def _hf_arch(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], source: str) -> HubertArch:
    """HubertConfig fields; a missing field takes HubertConfig's default (the HuBERT-base value)."""
    for activation_key in ("hidden_act", "feat_extract_activation"):
        if config.get(activation_key, "gelu") != "gelu":
            raise AssetCorrupt(
                f"{source}: {activation_key}={config[activation_key]!r}; only gelu is supported"
            )
    norm = config.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise AssetCorrupt(f"{source}: feat_extract_norm={norm!r} is neither 'group' nor 'layer'")
    conv_dim = config.get("conv_dim", [512] * 7)
    conv_kernel = config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])
    conv_stride = config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])
    return HubertArch(
        embed_dim=int(config.get("hidden_size", 768)),
        num_layers=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 12)),
        ff_dim=int(config.get("intermediate_size", 3072)),
        conv_layers=tuple(
            (int(c), int(k), int(s)) for c, k, s in zip(conv_dim, conv_kernel, conv_stride, strict=True)
        ),
        extractor_mode=f"{norm}_norm",
        conv_bias=bool(config.get("conv_bias", False)),
        pos_conv_kernel=int(config.get("num_conv_pos_embeddings", 128)),
        pos_conv_groups=int(config.get("num_conv_pos_embedding_groups", 16)),
        layer_norm_first=bool(config.get("do_stable_layer_norm", False)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
        final_proj_dim=_final_proj_dim(weights),
    )


def _read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    import torch

    bin_path = folder / "pytorch_model.bin"
    safetensors_path = folder / "model.safetensors"
    if bin_path.is_file():
        try:
            return dict(torch.load(bin_path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise AssetCorrupt(f"{bin_path} could not be read as a weights-only state dict: {exc}") from exc
    if safetensors_path.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise AssetMissing(
                f"{folder} has only model.safetensors and the safetensors package is not installed; "
                "provide pytorch_model.bin instead"
            ) from exc
        return dict(load_file(str(safetensors_path), device="cpu"))
    raise AssetMissing(f"{folder} has neither pytorch_model.bin nor model.safetensors")


def load_hf_folder(folder: Path) -> LoadedWeights:
    """A Hugging Face `HubertModel` folder (with or without ContentVec's `final_proj`)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise AssetMissing(f"{folder} has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetCorrupt(f"{config_path} is not valid JSON: {exc}") from exc
    state = _read_hf_state(folder)
    state = {key.removeprefix("hubert."): value for key, value in state.items()}
    weights, unused = translate_keys(state, HF_KEYS, HF_UNUSED, str(folder))
    model = load_translated(_hf_arch(config, weights, str(folder)), weights, str(folder))
    return LoadedWeights(model=model, unused_keys=unused)


# --- fairseq checkpoint ----------------------------------------------------------------------------
class _InertConfigObject:
    """Stands in for a pickled configuration class: keeps the pickled attributes, runs nothing."""

    def __new__(cls, *args: object, **kwargs: object) -> _InertConfigObject:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._reduce_args = args


def _inert_class(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[-1], (_InertConfigObject,), {"__module__": "rvc_core.inert"})


def _is_inert_candidate(full_name: str) -> bool:
    return full_name in _INERT_NAMES or full_name.startswith(_INERT_PREFIXES)


def read_fairseq_checkpoint(path: Path, *, max_stand_ins: int = 64) -> dict[str, Any]:
    """The checkpoint dict, read weights-only; configuration objects become inert stand-ins."""
    import pickle

    import torch

    stand_ins: list[tuple[type, str]] = []
    while True:
        try:
            with torch.serialization.safe_globals(stand_ins):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            match = _UNSUPPORTED_GLOBAL.search(str(exc))
            name = match.group(1) if match else None
            if name is None or not _is_inert_candidate(name) or len(stand_ins) >= max_stand_ins:
                detail = f"it needs {name}, which is not allowed" if name else _refusal_reason(exc)
                raise AssetCorrupt(
                    f"{path} is not a fairseq checkpoint that can be read safely: {detail}"
                ) from exc
            stand_ins.append((_inert_class(name), name))
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            raise AssetCorrupt(f"{path} could not be read as a checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), Mapping):
        raise AssetCorrupt(f"{path} is not a fairseq checkpoint (no 'model' state dict)")
    return checkpoint


def _refusal_reason(exc: Exception) -> str:
    """The specific line of torch's weights-only refusal (its first paragraph is boilerplate)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines[1:] if not line.startswith("Check the documentation")]
    return specific[0] if specific else (lines[0] if lines else type(exc).__name__)


def _fairseq_settings(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """Model settings from `cfg["model"]` (a plain dict in fairseq's own saves) or the legacy
    `args` namespace; {} when neither is readable, and HuBERT-base's values are used."""
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return cfg["model"]
    args = checkpoint.get("args")
    if args is not None and isinstance(getattr(args, "__dict__", None), dict):
        return args.__dict__
    return {}


def _fairseq_arch(
    checkpoint: Mapping[str, Any], weights: Mapping[str, torch.Tensor], source: str
) -> HubertArch:
    """Widths and depth from the weights (authoritative); heads and norm placement from the
    settings when present, else HuBERT-base's (64-d heads, post-norm)."""
    settings = _fairseq_settings(checkpoint)
    embed_dim = int(weights["network.encoder.feature_projection.projection.weight"].shape[0])
    pos_weight = weights[f"{_POS}.parametrizations.weight.original1"]
    ff_weight = weights.get(f"{_ATTN}.layers.0.feed_forward.intermediate_dense.weight")
    if ff_weight is None:
        raise AssetCorrupt(f"{source}: no transformer layers found")
    layer_norm_mode = "network.feature_extractor.conv_layers.1.layer_norm.weight" in weights
    return HubertArch(
        embed_dim=embed_dim,
        num_layers=_count_layers(weights, f"{_ATTN}.layers."),
        num_heads=int(settings.get("encoder_attention_heads", max(1, embed_dim // 64))),
        ff_dim=int(ff_weight.shape[0]),
        conv_layers=_conv_layers_from_weights(weights, source),
        extractor_mode="layer_norm" if layer_norm_mode else "group_norm",
        conv_bias="network.feature_extractor.conv_layers.0.conv.bias" in weights,
        pos_conv_kernel=int(pos_weight.shape[-1]),
        pos_conv_groups=embed_dim // int(pos_weight.shape[1]),
        layer_norm_first=bool(settings.get("layer_norm_first", False)),
        final_proj_dim=_final_proj_dim(weights),
    )


def load_fairseq_checkpoint(path: Path) -> LoadedWeights:
    """The classic fairseq `hubert_base.pt` (HuBERT-base or ContentVec)."""
    path = Path(path)
    if not path.is_file():
        raise AssetMissing(f"{path} does not exist")
    checkpoint = read_fairseq_checkpoint(path)
    weights, unused = translate_keys(checkpoint["model"], FAIRSEQ_KEYS, FAIRSEQ_UNUSED, str(path))
    required = (
        "network.encoder.feature_projection.projection.weight",
        f"{_POS}.parametrizations.weight.original1",
    )
    absent = [key for key in required if key not in weights]
    if absent:
        raise AssetCorrupt(f"{path}: weights missing: {_some(absent)}")
    model = load_translated(_fairseq_arch(checkpoint, weights, str(path)), weights, str(path))
    return LoadedWeights(model=model, unused_keys=unused)
