"""Content features: frame counts, widths, strict loading of both weight layouts, the NaN guard."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rvc_core.assets import MANIFEST, AssetStore
from rvc_core.errors import AssetCorrupt, AssetMissing, NonFiniteFeatures
from rvc_core.features import content_frames, load_content_encoder
from rvc_core.features.extract import ContentEncoder, plan_batches
from rvc_core.features.weights import load_fairseq_checkpoint, load_hf_folder
from rvc_core.testing import synthetic_voice
from tests.factories_features import (
    fairseq_state_dict,
    hf_state_dict,
    reference_layer,
    seeded_hubert,
    tiny_arch,
    write_fairseq_checkpoint,
    write_hf_folder,
)

SR = 16000


def voice(seconds: float, seed: int = 0) -> np.ndarray:
    return synthetic_voice(seconds, SR, seed=seed)


@pytest.fixture(scope="module")
def random_v2() -> ContentEncoder:
    return load_content_encoder("v2", assets=AssetStore(None))


@pytest.fixture(scope="module")
def random_v1() -> ContentEncoder:
    return load_content_encoder("v1", assets=AssetStore(None))


@pytest.fixture(scope="module")
def source():
    return seeded_hubert(tiny_arch(), seed=3)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.from_numpy(np.stack([voice(0.8, seed=1), voice(0.8, seed=2)]))


def _no_manifest_checks() -> tuple:
    """The real manifest's names with size and hash unknown, so test files pass verification."""
    return tuple(replace(asset, size_bytes=None, sha256=None) for asset in MANIFEST)


# --- frames and widths -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_samples", [400, 719, 720, 16000, 16123, 37000])
def test_frame_count_is_rvc_formula(random_v2: ContentEncoder, n_samples: int) -> None:
    audio = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32) * 0.1
    [features] = random_v2.extract([audio])
    assert features.shape[0] == (n_samples - 400) // 320 + 1


def test_v2_features_are_768_wide(random_v2: ContentEncoder) -> None:
    [features] = random_v2.extract([voice(1.0)])
    assert features.shape == (49, 768)


def test_v1_features_are_256_wide(random_v1: ContentEncoder) -> None:
    [features] = random_v1.extract([voice(1.0)])
    assert features.shape == (49, 256)


def test_features_are_finite_float32(random_v2: ContentEncoder) -> None:
    [features] = random_v2.extract([voice(0.5)])
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_each_item_comes_back_in_input_order(random_v2: ContentEncoder) -> None:
    lengths = [8000, 16000, 4000, 16000]
    outputs = random_v2.extract([voice(n / SR, seed=i) for i, n in enumerate(lengths)])
    assert [len(f) for f in outputs] == [(n - 400) // 320 + 1 for n in lengths]


def test_items_of_equal_length_batched_match_items_run_alone(random_v2: ContentEncoder) -> None:
    first, second = voice(0.7, seed=4), voice(0.7, seed=5)
    together = random_v2.extract([first, second])
    alone = random_v2.extract([first]) + random_v2.extract([second])
    for batched, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_items_of_different_lengths_batched_match_items_run_alone(version: str) -> None:
    # Tolerance 1.0 puts them all in one padded batch; the mask must hide the padding entirely.
    encoder = load_content_encoder(version, assets=AssetStore(None), pad_tolerance=1.0)
    items = [voice(seconds, seed=i) for i, seconds in enumerate((0.9, 0.5, 0.73, 0.031))]
    lengths = [len(a) for a in items]
    assert len(plan_batches(lengths, max_batch_samples=encoder.max_batch_samples, pad_tolerance=1.0)) == 1
    together = encoder.extract(items)
    alone = [encoder.extract([item])[0] for item in items]
    for batched, single in zip(together, alone, strict=True):
        assert batched.shape == single.shape
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [9, 12])
def test_padded_rows_with_lengths_match_rows_run_alone(source, layer: int) -> None:  # type: ignore[no-untyped-def]
    # A perturbed network: GroupNorm, positional convolution and attention all non-trivial.
    lengths = [16000, 11000, 6543, 401]
    rows = [voice(n / SR, seed=i) for i, n in enumerate(lengths)]
    padded = np.zeros((len(rows), max(lengths)), np.float32)
    for row, audio in zip(padded, rows, strict=True):
        row[: len(audio)] = audio
    with torch.inference_mode():
        together = source.layer_output(torch.from_numpy(padded), layer, lengths)
        alone = [source.layer_output(torch.from_numpy(audio[None]), layer)[0] for audio in rows]
        unmasked = source.layer_output(torch.from_numpy(padded), layer)
    for row, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(row[: len(single)].numpy(), single.numpy(), rtol=1e-5, atol=1e-5)
    # Without lengths a short row differs: the comparison above is not vacuous.
    assert not np.allclose(unmasked[2, : len(alone[2])].numpy(), alone[2].numpy(), rtol=1e-5, atol=1e-5)


def test_too_short_item_is_rejected(random_v2: ContentEncoder) -> None:
    with pytest.raises(ValueError, match="at least 400"):
        random_v2.extract([np.zeros(399, np.float32)])


# --- batch planning --------------------------------------------------------------------------------
def test_equal_lengths_share_one_batch() -> None:
    assert plan_batches([100, 100, 100], max_batch_samples=1000) == [[0, 1, 2]]


def test_different_lengths_are_not_padded_without_tolerance() -> None:
    assert plan_batches([100, 90, 100], max_batch_samples=1000) == [[0, 2], [1]]


def test_tolerance_lets_similar_lengths_share_a_batch() -> None:
    assert plan_batches([100, 95, 50], max_batch_samples=1000, pad_tolerance=0.1) == [[0, 1], [2]]


def test_batches_respect_the_sample_budget() -> None:
    groups = plan_batches([100] * 5, max_batch_samples=250)
    assert [len(g) for g in groups] == [2, 2, 1]


def test_item_longer_than_the_budget_gets_its_own_batch() -> None:
    assert plan_batches([500, 100], max_batch_samples=200) == [[0], [1]]


# --- Hugging Face folder ---------------------------------------------------------------------------
@pytest.mark.parametrize("weight_norm_names", ["legacy", "parametrized"])
def test_hf_folder_reproduces_source_layer_12(source, probe, tmp_path: Path, weight_norm_names: str) -> None:
    loaded = load_hf_folder(write_hf_folder(source, tmp_path / "hubert", weight_norm_names=weight_norm_names))
    with torch.inference_mode():
        got = loaded.model.layer_output(probe, 12)
    torch.testing.assert_close(got, reference_layer(source, probe, 12), rtol=0, atol=0)


def test_layer_12_is_the_final_hidden_state(source, probe, tmp_path: Path) -> None:
    """HF's last_hidden_state / hidden_states[12] of a post-norm HuBERT: no extra final norm."""
    loaded = load_hf_folder(write_hf_folder(source, tmp_path / "hubert"))
    with torch.inference_mode():
        final, _ = source.network(probe)
        got = loaded.model.layer_output(probe, 12)
    torch.testing.assert_close(got, final, rtol=0, atol=0)


def test_hf_folder_reproduces_source_v1_projection(source, probe, tmp_path: Path) -> None:
    loaded = load_hf_folder(write_hf_folder(source, tmp_path / "hubert"))
    with torch.inference_mode():
        got = loaded.model.project(loaded.model.layer_output(probe, 9))
        expected = source.final_proj(reference_layer(source, probe, 9))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_hf_folder_reports_its_unused_training_weights(source, tmp_path: Path) -> None:
    loaded = load_hf_folder(write_hf_folder(source, tmp_path / "hubert"))
    assert loaded.unused_keys == ("masked_spec_embed",)


def test_hf_folder_with_unknown_weight_is_rejected(source, tmp_path: Path) -> None:
    state = hf_state_dict(source)
    state["encoder.layers.0.adapter_layer.norm.weight"] = torch.ones(source.arch.embed_dim)
    with pytest.raises(AssetCorrupt, match="adapter_layer"):
        load_hf_folder(write_hf_folder(source, tmp_path / "hubert", state=state))


def test_hf_folder_with_missing_weight_is_rejected(source, tmp_path: Path) -> None:
    state = hf_state_dict(source)
    del state["encoder.layers.5.final_layer_norm.bias"]
    with pytest.raises(AssetCorrupt, match=r"layers\.5\.final_layer_norm\.bias"):
        load_hf_folder(write_hf_folder(source, tmp_path / "hubert", state=state))


# --- fairseq checkpoint ----------------------------------------------------------------------------
@pytest.mark.parametrize("legacy_format", [False, True])
def test_fairseq_checkpoint_reproduces_source_layer_12(
    source, probe, tmp_path: Path, legacy_format: bool
) -> None:
    path = write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt", legacy_format=legacy_format)
    loaded = load_fairseq_checkpoint(path)
    with torch.inference_mode():
        got = loaded.model.layer_output(probe, 12)
    torch.testing.assert_close(got, reference_layer(source, probe, 12), rtol=0, atol=0)


def test_fairseq_checkpoint_reproduces_source_v1_projection(source, probe, tmp_path: Path) -> None:
    loaded = load_fairseq_checkpoint(write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt"))
    with torch.inference_mode():
        got = loaded.model.project(loaded.model.layer_output(probe, 9))
        expected = source.final_proj(reference_layer(source, probe, 9))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fairseq_checkpoint_reports_its_unused_training_weights(source, tmp_path: Path) -> None:
    loaded = load_fairseq_checkpoint(write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt"))
    assert sorted(loaded.unused_keys) == ["label_embs_concat", "mask_emb"]


def test_fairseq_checkpoint_with_unknown_weight_is_rejected(source, tmp_path: Path) -> None:
    state = fairseq_state_dict(source)
    state["encoder.layers.3.self_attn.rotary.freqs"] = torch.ones(4)
    with pytest.raises(AssetCorrupt, match="rotary"):
        load_fairseq_checkpoint(write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt", state=state))


def test_fairseq_checkpoint_with_missing_weight_is_rejected(source, tmp_path: Path) -> None:
    state = fairseq_state_dict(source)
    del state["encoder.layers.11.fc2.weight"]
    with pytest.raises(AssetCorrupt, match=r"layers\.11\.feed_forward\.output_dense\.weight"):
        load_fairseq_checkpoint(write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt", state=state))


class _RunsCodeWhenUnpickled:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "hubert_base.pt"
    torch.save({"model": {}, "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(AssetCorrupt, match="makedirs"):
        load_fairseq_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_corrupt(source, tmp_path: Path) -> None:
    path = write_fairseq_checkpoint(source, tmp_path / "hubert_base.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AssetCorrupt):
        load_fairseq_checkpoint(path)


# --- through the assets folder ---------------------------------------------------------------------
def test_missing_encoder_names_the_file_and_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(AssetMissing) as caught:
        load_content_encoder("v2", assets=AssetStore(tmp_path))
    message = caught.value.message
    assert "hubert_base.pt" in message
    assert str(tmp_path) in message
    assert "python -m rvc_core assets download --dest DIR" in message


def test_random_weights_are_announced_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_content_encoder("v2", assets=AssetStore(None))
    assert any("RANDOM WEIGHTS" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_real_width_fp16_fairseq_file_in_assets_folder_gives_source_features(tmp_path: Path) -> None:
    """hubert_base.pt ships in float16; here 768-wide like the real one, but with tiny convolutions."""
    arch = tiny_arch(
        embed_dim=768, num_heads=12, ff_dim=16, pos_conv_kernel=4, pos_conv_groups=16, final_proj_dim=256
    )
    model = seeded_hubert(arch, seed=5)
    model.network.half().float()  # the source holds exactly the values a float16 file can
    model.final_proj.half().float()
    write_fairseq_checkpoint(model, tmp_path / "hubert_base.pt", dtype=torch.float16)
    encoder = load_content_encoder("v1", assets=AssetStore(tmp_path, manifest=_no_manifest_checks()))
    audio = voice(0.3, seed=7)
    [features] = encoder.extract([audio])
    with torch.inference_mode():
        expected = model.final_proj(reference_layer(model, torch.from_numpy(audio[None]), 9))[0].numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_hf_folder_in_assets_folder_is_used_and_a_wrong_width_is_refused(source, tmp_path: Path) -> None:
    """No hubert_base.pt: the Hugging Face folder is loaded, and its 32-d output is not v2's 768."""
    write_hf_folder(source, tmp_path / "hubert_base")
    with pytest.raises(AssetCorrupt, match="32-d v2 features"):
        load_content_encoder("v2", assets=AssetStore(tmp_path, manifest=_no_manifest_checks()))


def test_encoder_of_the_wrong_depth_is_refused(tmp_path: Path) -> None:
    shallow = seeded_hubert(tiny_arch(num_layers=6), seed=2)
    write_fairseq_checkpoint(shallow, tmp_path / "hubert_base.pt")
    with pytest.raises(AssetCorrupt, match="6 layers"):
        load_content_encoder("v1", assets=AssetStore(tmp_path, manifest=_no_manifest_checks()))


@pytest.fixture(scope="module")
def random_full_v2() -> ContentEncoder:
    return load_content_encoder("v2", assets=AssetStore.random_full())


def test_random_full_encoder_is_hubert_base_shaped(random_full_v2: ContentEncoder) -> None:
    arch = random_full_v2.model.arch
    layers = random_full_v2.model.network.encoder.transformer.layers
    assert (len(layers), arch.embed_dim, arch.num_heads, arch.ff_dim) == (12, 768, 12, 3072)
    assert random_full_v2.output_layer == 12


def test_random_full_encoder_holds_as_many_values_as_the_published_weights(
    random_full_v2: ContentEncoder,
) -> None:
    # pytorch_model.bin is fp16 (2 bytes per value) plus a little pickle overhead and one
    # 768-value training-only mask embedding that torchaudio's model has no slot for.
    published = next(a for a in MANIFEST if a.name == "hubert_base/pytorch_model.bin").size_bytes
    assert published is not None
    model = random_full_v2.model
    modules = (model.network, model.final_proj)
    values = sum(t.numel() for m in modules if m is not None for t in m.state_dict().values())
    assert 0.999 * published < 2 * values < published


def test_random_full_v1_encoder_reads_layer_9_through_final_proj() -> None:
    encoder = load_content_encoder("v1", assets=AssetStore.random_full())
    assert encoder.output_layer == 9
    assert (
        encoder.model.final_proj is not None and encoder.model.final_proj.out_features == encoder.dim == 256
    )


# --- the NaN guard ---------------------------------------------------------------------------------
def test_encoder_emitting_nan_raises_non_finite_features(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = load_content_encoder("v2", assets=AssetStore(None))
    real = encoder.model.layer_output
    monkeypatch.setattr(
        encoder.model, "layer_output", lambda x, layer, lengths=None: real(x, layer, lengths) * float("nan")
    )
    with pytest.raises(NonFiniteFeatures) as caught:
        encoder.extract([voice(0.5)])
    assert caught.value.code == "non_finite_features"


def test_nan_in_a_batch_is_recomputed_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = load_content_encoder("v2", assets=AssetStore(None))
    audio = voice(0.5, seed=9)
    [expected] = encoder.extract([audio])
    real = encoder.model.layer_output
    calls = []

    def nan_on_first_call(x: torch.Tensor, layer: int, lengths: list[int] | None = None) -> torch.Tensor:
        calls.append(x.shape)
        out = real(x, layer, lengths)
        return out * float("nan") if len(calls) == 1 else out

    monkeypatch.setattr(encoder.model, "layer_output", nan_on_first_call)
    [features] = encoder.extract([audio])
    assert len(calls) == 2
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_nan_input_is_refused_before_running(random_v2: ContentEncoder) -> None:
    audio = voice(0.5)
    audio[100] = np.nan
    with pytest.raises(NonFiniteFeatures, match="input audio"):
        random_v2.extract([audio])


# --- import cost and the GPU path ------------------------------------------------------------------
def test_importing_features_and_assets_does_not_import_torch() -> None:
    code = "import sys, rvc_core.features, rvc_core.assets; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
def test_cuda_half_precision_features_match_cpu(random_v2: ContentEncoder) -> None:
    cuda = load_content_encoder("v2", assets=AssetStore(None), device="cuda")
    assert cuda.half
    items = [voice(3.0, seed=i) for i in range(4)] + [voice(1.3, seed=9)]
    on_gpu = cuda.extract(items)
    on_cpu = random_v2.extract(items)
    for gpu_features, cpu_features in zip(on_gpu, on_cpu, strict=True):
        assert gpu_features.dtype == np.float32 and np.isfinite(gpu_features).all()
        assert gpu_features.shape == cpu_features.shape
        np.testing.assert_allclose(gpu_features, cpu_features, atol=0.05, rtol=0.05)


@pytest.mark.gpu
def test_cuda_full_size_random_encoder_gives_finite_features_on_the_frame_grid() -> None:
    # Full-size HuBERT-base in fp16 autocast is what the GPU benchmark times: it must not overflow.
    encoder = load_content_encoder("v2", assets=AssetStore.random_full(), device="cuda")
    items = [voice(3.0, seed=i) for i in range(3)]
    features = encoder.extract(items)
    assert [f.shape for f in features] == [(content_frames(len(item)), 768) for item in items]
    assert all(np.isfinite(f).all() for f in features)
