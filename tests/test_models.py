"""RVC generator and discriminators: names and shapes against the reference manifests, weight files,
forward shapes, spectrograms, the NSF source and the losses."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rvc_core.errors import ConfigError, PretrainedMismatch
from rvc_core.models import (
    Generator,
    build_discriminator,
    build_generator,
    discriminator_loss,
    export_generator_weights,
    feature_matching_loss,
    from_legacy_state_dict,
    generator_adversarial_loss,
    kl_loss,
    linear_spectrogram,
    load_pretrained,
    mel_from_linear,
    mel_spectrogram,
    slice_segments,
    to_legacy_state_dict,
)
from rvc_core.models.audio import mel_filterbank
from rvc_core.models.nsf import SineSource
from rvc_core.spec import FEATURE_DIMS, MODEL_SHAPES, SPECTROGRAMS, TRAINING_SEGMENT_SAMPLES

# Copies of the project's reference manifests (shared/spec/rvc_state_dicts), so the repo tests alone.
MANIFESTS = Path(__file__).resolve().parent / "fixtures" / "rvc_state_dicts"

GENERATOR_MANIFESTS = {
    "G_v2_40k_f0": ("v2", 40000, True),
    "G_v2_48k_f0": ("v2", 48000, True),
    "G_v2_32k_f0": ("v2", 32000, True),
    "G_v1_40k_f0": ("v1", 40000, True),
    "G_v2_40k_nof0": ("v2", 40000, False),
}
DISCRIMINATOR_MANIFESTS = {"D_v2": "v2", "D_v1": "v1"}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is fastest, and it avoids OpenMP spin-waiting when
    the CPUs are shared with other processes (2 threads were 30x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            shapes[key] = tuple(int(n) for n in shape.split("x"))
    return shapes


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in state.items()}


def tiny_batch(g: Generator, *, batch: int = 2, frames: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for one training forward pass of `g`, with one shorter item to exercise the masks."""
    gen = torch.Generator().manual_seed(seed)
    spec = SPECTROGRAMS[g.sample_rate]
    lengths = torch.full((batch,), frames, dtype=torch.long)
    lengths[-1] = frames - 6
    wave = 0.1 * torch.randn(batch, frames * spec.hop_length, generator=gen)
    return {
        "phone": torch.randn(batch, frames, FEATURE_DIMS[g.version], generator=gen),
        "phone_lengths": lengths,
        "pitch": torch.randint(1, 256, (batch, frames), generator=gen) if g.f0 else None,
        "pitchf": (100 + 200 * torch.rand(batch, frames, generator=gen)) if g.f0 else None,
        "spec": linear_spectrogram(wave, spec),
        "spec_lengths": lengths,
        "sid": torch.zeros(batch, dtype=torch.long),
    }


# --- names and shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", sorted(GENERATOR_MANIFESTS))
def test_full_generator_state_dict_equals_reference_manifest(manifest: str) -> None:
    version, sample_rate, f0 = GENERATOR_MANIFESTS[manifest]
    g = build_generator(version, sample_rate, f0=f0)
    assert shapes_of(to_legacy_state_dict(g.state_dict())) == read_manifest(manifest)


@pytest.mark.parametrize("manifest", sorted(DISCRIMINATOR_MANIFESTS))
def test_full_discriminator_state_dict_equals_reference_manifest(manifest: str) -> None:
    d = build_discriminator(DISCRIMINATOR_MANIFESTS[manifest])
    assert shapes_of(to_legacy_state_dict(d.state_dict())) == read_manifest(manifest)


@pytest.mark.parametrize("manifest", ["G_v2_40k_f0", "D_v2"])
def test_manifest_names_convert_to_exactly_our_parameter_names(manifest: str) -> None:
    model = build_generator("v2", 40000) if manifest.startswith("G") else build_discriminator("v2")
    legacy = {name: torch.empty(0) for name in read_manifest(manifest)}
    assert set(from_legacy_state_dict(legacy)) == set(model.state_dict())


def test_full_generator_shape_is_the_exported_config() -> None:
    g = build_generator("v2", 48000)
    assert g.shape == MODEL_SHAPES[("v2", 48000)]
    assert len(g.shape.as_config_list()) == 18


def test_tiny_preset_exports_a_subset_of_rvc_names_with_far_fewer_parameters() -> None:
    full = build_generator("v2", 40000)
    tiny = build_generator("v2", 40000, preset="tiny")

    # Same module tree, fewer attention layers (n_layers travels in the exported config).
    assert export_generator_weights(tiny).keys() <= export_generator_weights(full).keys()
    assert sum(p.numel() for p in tiny.parameters()) * 20 < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize(
    ("version", "sample_rate", "preset"),
    [("v3", 40000, "full"), ("v2", 44100, "full"), ("v2", 40000, "huge")],
)
def test_unknown_version_rate_or_preset_is_a_config_error(
    version: str, sample_rate: int, preset: str
) -> None:
    with pytest.raises(ConfigError):
        build_generator(version, sample_rate, preset=preset)


# --- weight files --------------------------------------------------------------------------------


def test_official_layout_pretrained_file_loads_strictly_and_reproduces_parameters(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_generator("v2", 40000)
    legacy_fp16 = {k: v.half() for k, v in to_legacy_state_dict(source.state_dict()).items()}
    path = tmp_path / "f0G40k.pth"
    torch.save({"model": legacy_fp16}, path)
    torch.manual_seed(2)
    fresh = build_generator("v2", 40000)

    load_pretrained(fresh, path)

    loaded = to_legacy_state_dict(fresh.state_dict())
    assert all(loaded[k].dtype == torch.float32 for k in loaded)
    assert all(torch.equal(loaded[k], legacy_fp16[k].float()) for k in legacy_fp16)


def test_bare_state_dict_file_loads_too(tmp_path: Path) -> None:
    source = build_discriminator("v1", preset="tiny")
    path = tmp_path / "bare.pth"
    torch.save(to_legacy_state_dict(source.state_dict()), path)
    fresh = build_discriminator("v1", preset="tiny")

    load_pretrained(fresh, path)

    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), source.state_dict().values(), strict=True)
    )


def test_pretrained_with_missing_and_misshaped_keys_names_them(tmp_path: Path) -> None:
    state = to_legacy_state_dict(build_generator("v2", 40000, preset="tiny").state_dict())
    del state["emb_g.weight"]
    state["dec.ups.0.weight_v"] = torch.zeros(3, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)

    with pytest.raises(PretrainedMismatch) as caught:
        load_pretrained(build_generator("v2", 40000, preset="tiny"), path)

    assert caught.value.code == "pretrained_mismatch"
    assert "emb_g.weight" in caught.value.message
    assert "dec.ups.0.weight_v" in caught.value.message


def test_pretrained_for_another_version_is_rejected_with_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "D_v2.pth"
    torch.save({"model": to_legacy_state_dict(build_discriminator("v2", preset="tiny").state_dict())}, path)

    with pytest.raises(PretrainedMismatch, match=r"unexpected.*discriminators\.7\."):
        load_pretrained(build_discriminator("v1", preset="tiny"), path)


def test_export_is_fp16_legacy_names_without_enc_q_matching_manifest() -> None:
    g = build_generator("v2", 40000)

    weights = export_generator_weights(g)

    expected = {k: v for k, v in read_manifest("G_v2_40k_f0").items() if "enc_q" not in k}
    assert shapes_of(weights) == expected
    assert all(
        v.dtype == torch.float16 and v.device.type == "cpu" and v.is_contiguous() for v in weights.values()
    )
    assert not any(v.requires_grad for v in weights.values())


# --- forward passes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "sample_rate", "f0"),
    [
        ("v2", 40000, True),
        ("v2", 48000, True),
        ("v2", 32000, True),
        ("v1", 40000, True),
        ("v2", 40000, False),
    ],
)
def test_training_forward_returns_one_window_of_audio(version: str, sample_rate: int, f0: bool) -> None:
    g = build_generator(version, sample_rate, f0=f0, preset="tiny")
    batch = tiny_batch(g)

    out = g(**batch)

    hop = SPECTROGRAMS[sample_rate].hop_length
    assert g.segment_frames * hop == TRAINING_SEGMENT_SAMPLES[(version, sample_rate)]
    assert out.audio.shape == (2, 1, g.segment_frames * hop)
    assert out.ids_slice.shape == (2,)
    assert (
        out.z.shape == out.z_p.shape == out.m_q.shape == out.logs_p.shape == (2, g.shape.inter_channels, 48)
    )
    assert out.x_mask.shape == out.z_mask.shape == (2, 1, 48)
    assert bool(torch.isfinite(out.audio).all())


def test_random_window_stays_inside_each_items_valid_frames() -> None:
    g = build_generator("v2", 40000, preset="tiny")
    batch = tiny_batch(g, batch=8, frames=40)

    ids = torch.cat([g(**batch).ids_slice for _ in range(3)])

    lengths = batch["spec_lengths"].repeat(3)
    assert bool((ids >= 0).all()) and bool((ids + g.segment_frames <= lengths).all())


@pytest.mark.parametrize(
    ("version", "sample_rate", "f0"), [("v2", 40000, True), ("v1", 48000, True), ("v2", 32000, False)]
)
def test_infer_returns_hop_samples_per_frame(version: str, sample_rate: int, f0: bool) -> None:
    g = build_generator(version, sample_rate, f0=f0, preset="tiny").eval()
    batch = tiny_batch(g, frames=23)

    with torch.no_grad():
        audio = g.infer(batch["phone"], batch["phone_lengths"], batch["pitch"], batch["pitchf"], batch["sid"])

    assert audio.shape == (2, 1, 23 * SPECTROGRAMS[sample_rate].hop_length)


def test_pitch_guided_generator_without_pitch_is_refused() -> None:
    g = build_generator("v2", 40000, preset="tiny")
    batch = tiny_batch(g) | {"pitch": None, "pitchf": None}

    with pytest.raises(ValueError, match="pitch"):
        g(**batch)


def test_training_losses_send_gradients_to_every_generator_part() -> None:
    g = build_generator("v2", 40000, preset="tiny")
    out = g(**tiny_batch(g))

    (out.audio.square().mean() + kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.z_mask)).backward()

    for part in ("enc_p", "enc_q", "flow", "dec", "emb_g"):
        grads = [p.grad for n, p in g.named_parameters() if n.startswith(part)]
        assert any(gr is not None and bool(gr.abs().sum() > 0) for gr in grads), part


def test_flow_reverse_undoes_forward() -> None:
    torch.manual_seed(0)
    g = build_generator("v2", 40000, preset="tiny")
    for p in g.flow.parameters():  # a fresh flow is the identity: perturb it to make the test meaningful
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, g.shape.inter_channels, 30)
    mask = torch.ones(2, 1, 30)
    speaker = torch.randn(2, g.shape.gin_channels, 1)

    with torch.no_grad():
        restored = g.flow(g.flow(x, mask, speaker), mask, speaker, reverse=True)

    assert not torch.allclose(g.flow(x, mask, speaker), x, atol=1e-3)
    assert torch.allclose(restored, x, atol=1e-5)


def test_text_encoder_output_on_valid_frames_ignores_padding_content() -> None:
    g = build_generator("v2", 40000, preset="tiny").eval()
    batch = tiny_batch(g, batch=1, frames=20)
    lengths = torch.tensor([14])
    noisy = batch["phone"].clone()
    noisy[:, 14:] = 100.0

    m_clean, _, _ = g.enc_p(batch["phone"], batch["pitch"], lengths)
    m_noisy, _, _ = g.enc_p(noisy, batch["pitch"], lengths)

    assert torch.allclose(m_clean[..., :14], m_noisy[..., :14], atol=1e-5)


def test_slice_segments_cuts_each_item_at_its_own_start() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)

    window = slice_segments(x, torch.tensor([1, 6]), 4)

    assert torch.equal(window[0], x[0, :, 1:5])
    assert torch.equal(window[1], x[1, :, 6:10])


# --- discriminators --------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "count"), [("v2", 1 + 8), ("v1", 1 + 6)])
def test_discriminator_returns_one_logit_and_fmap_set_per_sub_discriminator(version: str, count: int) -> None:
    d = build_discriminator(version, preset="tiny")
    y = 0.1 * torch.randn(2, 1, 12800)

    real, fake, real_fmaps, fake_fmaps = d(y, 0.1 * torch.randn(2, 1, 12800))

    assert len(real) == len(fake) == len(real_fmaps) == len(fake_fmaps) == count
    assert all(r.shape == f.shape and r.shape[0] == 2 for r, f in zip(real, fake, strict=True))
    assert [len(f) for f in real_fmaps] == [7] + [6] * (count - 1)


def test_discriminator_scores_each_input_independently_of_the_other() -> None:
    d = build_discriminator("v2", preset="tiny")
    y = 0.1 * torch.randn(2, 1, 4000)

    real_a, _, _, _ = d(y, torch.zeros(2, 1, 4000))
    real_b, _, _, _ = d(y, torch.ones(2, 1, 4000))

    assert all(torch.allclose(a, b) for a, b in zip(real_a, real_b, strict=True))


# --- spectrograms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [32000, 40000, 48000])
def test_spectrograms_have_one_frame_per_hop_and_rvc_bin_counts(sample_rate: int) -> None:
    spec = SPECTROGRAMS[sample_rate]
    audio = 0.1 * torch.randn(2, 25 * spec.hop_length)

    linear = linear_spectrogram(audio, spec)
    mel = mel_spectrogram(audio, spec)

    assert linear.shape == (2, MODEL_SHAPES[("v2", sample_rate)].spec_channels, 25)
    assert mel.shape == (2, {32000: 80, 40000: 125, 48000: 128}[sample_rate], 25)


def test_linear_spectrogram_of_a_tone_peaks_at_its_frequency_bin() -> None:
    spec = SPECTROGRAMS[40000]
    t = torch.arange(40 * spec.hop_length) / spec.sample_rate
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)

    magnitude = linear_spectrogram(tone.unsqueeze(0), spec)

    bin_hz = spec.sample_rate / spec.n_fft
    assert int(magnitude[0, :, 20].argmax()) == round(1000.0 / bin_hz)


def test_silence_gives_the_magnitude_floor() -> None:
    spec = SPECTROGRAMS[40000]
    silence = torch.zeros(1, 10 * spec.hop_length)

    assert torch.allclose(linear_spectrogram(silence, spec), torch.tensor(1e-3))


def test_log_mel_is_clamped_at_1e_minus_5() -> None:
    spec = SPECTROGRAMS[40000]
    zeros = torch.zeros(1, spec.n_fft // 2 + 1, 3)

    assert torch.allclose(mel_from_linear(zeros, spec), torch.tensor(math.log(1e-5)))


@pytest.mark.parametrize("sample_rate", [32000, 40000, 48000])
def test_mel_filterbank_equals_librosa(sample_rate: int) -> None:
    librosa = pytest.importorskip("librosa")
    spec = SPECTROGRAMS[sample_rate]

    reference = librosa.filters.mel(sr=sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=0.0, fmax=None)

    assert torch.allclose(mel_filterbank(spec), torch.from_numpy(reference), rtol=1e-5, atol=1e-8)


def test_spectrograms_stay_fp32_under_autocast() -> None:
    spec = SPECTROGRAMS[40000]
    audio = 0.1 * torch.randn(1, 8 * spec.hop_length)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mel = mel_spectrogram(audio.bfloat16(), spec)

    assert mel.dtype == torch.float32


# --- NSF source -------------------------------------------------------------------------------------


def test_sine_source_oscillates_at_the_frame_pitch() -> None:
    source = SineSource(40000, noise_std=0.0)
    f0 = torch.full((1, 100), 220.0)

    excitation = source.excitation(f0, 400)[0, :, 0]

    spectrum = torch.fft.rfft(excitation).abs()
    peak_hz = int(spectrum.argmax()) * 40000 / excitation.numel()
    assert abs(peak_hz - 220.0) < 1.0
    assert abs(float(excitation.abs().max()) - 0.1) < 1e-3


def test_sine_source_is_noise_only_on_unvoiced_frames() -> None:
    torch.manual_seed(0)
    source = SineSource(40000)
    f0 = torch.zeros(1, 50)

    excitation = source.excitation(f0, 400)

    assert abs(float(excitation.std()) - 0.1 / 3) < 2e-3


def test_sine_source_phase_is_continuous_across_frames_with_changing_pitch() -> None:
    source = SineSource(40000, noise_std=0.0)
    f0 = torch.linspace(100.0, 400.0, 200).unsqueeze(0)

    wave = source.excitation(f0, 400)[0, :, 0] / 0.1

    # A continuous sine of at most 400 Hz moves at most 2*pi*400/40000 rad per sample.
    step_bound = 2 * math.pi * 400.0 / 40000 * 1.01
    assert float(wave.diff().abs().max()) <= step_bound


def test_sine_source_runs_in_fp32_under_low_precision_autocast() -> None:
    source = SineSource(48000, noise_std=0.0)
    f0 = torch.full((1, 2000), 441.0)  # 20 s at 100 fps: a long phase accumulation

    torch.manual_seed(0)
    reference = source(f0, 480)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        under_autocast = source(f0, 480)

    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, reference, atol=1e-5)


def test_decoder_waveform_is_fp32_and_close_to_fp32_under_bf16_autocast() -> None:
    # The waveform feeds the mel loss; rounding it to bf16 would put a floor under that loss.
    g = build_generator("v2", 40000, preset="tiny").eval()
    torch.manual_seed(0)
    x = torch.randn(1, g.shape.inter_channels, 20)
    cond = torch.randn(1, g.shape.gin_channels, 1)
    f0 = torch.full((1, 20), 220.0)
    with torch.no_grad():
        torch.manual_seed(1)
        reference = g.dec(x, cond, f0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(1)
            mixed = g.dec(x, cond, f0)
    assert mixed.dtype == torch.float32
    # Only the earlier stages ran in bf16: the output differs from fp32 by far less than bf16's
    # own rounding of a full-scale signal (~4e-3).
    assert float((mixed - reference).abs().mean()) < 2e-3


# --- losses -------------------------------------------------------------------------------------------


def test_discriminator_loss_is_zero_for_perfect_discrimination_and_positive_otherwise() -> None:
    real = [torch.ones(2, 5), torch.ones(2, 7)]
    fake = [torch.zeros(2, 5), torch.zeros(2, 7)]

    assert float(discriminator_loss(real, fake)) == 0.0
    assert float(discriminator_loss(fake, real)) > 0.0


def test_generator_adversarial_loss_is_zero_when_fakes_pass_as_real() -> None:
    assert float(generator_adversarial_loss([torch.ones(2, 5), torch.ones(3, 1)])) == 0.0
    assert float(generator_adversarial_loss([torch.zeros(2, 5)])) == 1.0


def test_feature_matching_is_twice_the_summed_mean_absolute_difference() -> None:
    real = [[torch.zeros(2, 3), torch.zeros(2, 4, 5)]]
    fake = [[torch.ones(2, 3), torch.full((2, 4, 5), 0.5)]]

    assert float(feature_matching_loss(real, real)) == 0.0
    assert float(feature_matching_loss(real, fake)) == pytest.approx(2 * (1.0 + 0.5))


def test_feature_matching_does_not_train_through_real_feature_maps() -> None:
    real = torch.zeros(2, 3, requires_grad=True)
    fake = torch.ones(2, 3, requires_grad=True)

    feature_matching_loss([[real]], [[fake]]).backward()

    assert real.grad is None and fake.grad is not None


def test_kl_loss_matches_closed_form_and_ignores_padded_frames() -> None:
    shape = (1, 4, 6)
    logs_p = torch.full(shape, math.log(2.0))
    m_p = torch.zeros(shape)
    z_p = torch.full(shape, 2.0)
    logs_q = torch.zeros(shape)
    mask = torch.ones(1, 1, 6)
    mask[..., 4:] = 0
    z_p[..., 4:] = 1e3  # garbage in padded frames must not count

    loss = kl_loss(z_p, logs_q, m_p, logs_p, mask)

    # log(2) - 0 - 0.5 + 0.5 * 2^2 / 2^2 = log(2), per valid element, averaged over valid frames.
    assert float(loss) == pytest.approx(4 * math.log(2.0))


def test_losses_are_fp32_for_bf16_inputs() -> None:
    logits = [torch.rand(2, 5).bfloat16()]

    assert discriminator_loss(logits, logits).dtype == torch.float32
    assert generator_adversarial_loss(logits).dtype == torch.float32


# --- accelerator ----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_full_models_train_one_bf16_step_on_cuda() -> None:
    device = torch.device("cuda")
    g = build_generator("v2", 40000).to(device)
    d = build_discriminator("v2").to(device)
    batch = {
        k: (v.to(device) if v is not None else None) for k, v in tiny_batch(g, batch=2, frames=64).items()
    }
    spec = SPECTROGRAMS[40000]
    wave = 0.1 * torch.randn(2, 1, 64 * spec.hop_length, device=device)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = g(**batch)
        real = slice_segments(wave, out.ids_slice * spec.hop_length, g.segment_frames * spec.hop_length)
        _, fake_logits, real_fmaps, fake_fmaps = d(real, out.audio)
    loss = (
        generator_adversarial_loss(fake_logits)
        + feature_matching_loss(real_fmaps, fake_fmaps)
        + 45 * torch.nn.functional.l1_loss(mel_spectrogram(out.audio, spec), mel_spectrogram(real, spec))
        + kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.z_mask)
    )
    loss.backward()

    assert bool(torch.isfinite(loss))
    assert all(bool(torch.isfinite(p.grad).all()) for p in g.parameters() if p.grad is not None)
