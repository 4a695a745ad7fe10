"""Pitch extraction: the coarse table, each method's accuracy and frame grid, RMVPE's file format."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rvc_core.assets import AssetStore
from rvc_core.errors import AssetCorrupt, AssetMissing, ConfigError
from rvc_core.pitch import PitchExtractor, coarse_pitch, load_pitch_extractor
from rvc_core.pitch.base import fit_to_grid
from rvc_core.testing import harmonic_tone

SR = 16000  # Hz
HOP = 160  # samples
TRAINED_METHODS = ("crepe-tiny", "crepe", "pm", "harvest")  # methods whose output means something
ALL_METHODS = ("rmvpe", *TRAINED_METHODS)
VIBRATO_HZ = 5.5
VIBRATO_CENTS = 30.0
TONE_SECONDS = 0.8
EDGE_FRAMES = 5  # frames ignored at each end when scoring accuracy
# Tones each method must track; the full CREPE model is slow on a CPU, so it gets one.
TONES: dict[str, tuple[float, ...]] = {
    "crepe-tiny": (110.0, 220.0, 440.0),
    "crepe": (220.0,),
    "pm": (110.0, 220.0, 440.0),
    "harvest": (110.0, 220.0, 440.0),
}
# Mixed order and awkward lengths: multiples of the hop, off by one, a ~0.1 s clip, nothing.
CLIP_LENGTHS = (4800, 1600, 4001, 1601, 3359, 159, 0)
SILENCE_SAMPLES = 3200


def _expected_frames(n: int) -> int:
    return n // HOP + 1


def _noisy_tone(n_samples: int, seed: int = 0) -> np.ndarray:
    """`n_samples` of a 150 Hz tone with a little noise (an empty array for 0)."""
    if n_samples == 0:
        return np.zeros(0, dtype=np.float32)
    noise = 0.01 * np.random.default_rng(seed).standard_normal(n_samples)
    return (harmonic_tone(150.0, n_samples / SR, SR) + noise).astype(np.float32)


def _vibrato_tone(f0: float) -> np.ndarray:
    return harmonic_tone(f0, TONE_SECONDS, SR, vibrato_hz=VIBRATO_HZ, vibrato_cents=VIBRATO_CENTS)


def _true_f0(f0: float, n_frames: int) -> np.ndarray:
    """The tone's instantaneous f0 at each frame centre (frame i at i * 10 ms)."""
    t = np.arange(n_frames) * HOP / SR
    return f0 * 2.0 ** (VIBRATO_CENTS / 1200 * np.sin(2 * np.pi * VIBRATO_HZ * t))


def _share_within_a_semitone(pitch: np.ndarray, f0: float) -> float:
    inner = slice(EDGE_FRAMES, -EDGE_FRAMES)
    truth = _true_f0(f0, pitch.size)[inner]
    error_semitones = np.abs(12 * np.log2(np.maximum(pitch[inner], 1e-3) / truth))
    return float(np.mean(error_semitones < 1.0))


@pytest.fixture(scope="module")
def extractors() -> dict[str, PitchExtractor]:
    """Each method loaded once for the module (`--assets none`: RMVPE is random-initialised)."""
    assets = AssetStore(None)
    return {m: load_pitch_extractor(m, assets=assets) for m in ALL_METHODS}


@pytest.fixture(scope="module")
def tone_pitch(extractors: dict[str, PitchExtractor]) -> Callable[[str], dict[float, np.ndarray]]:
    """f0 of the vibrato tones, one batch per method, computed on first use."""

    @functools.cache
    def run(method: str) -> dict[float, np.ndarray]:
        freqs = TONES[method]
        return dict(zip(freqs, extractors[method].extract([_vibrato_tone(f) for f in freqs]), strict=True))

    return run


@pytest.fixture(scope="module")
def grid_pitch(extractors: dict[str, PitchExtractor]) -> Callable[[str], list[np.ndarray]]:
    """Each method's output for clips of CLIP_LENGTHS, in one batch, computed on first use."""

    @functools.cache
    def run(method: str) -> list[np.ndarray]:
        return extractors[method].extract([_noisy_tone(n, seed=i) for i, n in enumerate(CLIP_LENGTHS)])

    return run


# --- coarse pitch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f0_hz", "coarse"),
    [(0, 1), (50, 1), (80, 12), (100, 20), (220, 60), (440, 122), (880, 217), (1100, 255), (1500, 255)],
)
def test_coarse_pitch_follows_rvc_table(f0_hz: float, coarse: int) -> None:
    assert coarse_pitch(np.array([f0_hz], dtype=np.float32)).tolist() == [coarse]


def test_coarse_pitch_is_int64_of_the_same_shape() -> None:
    ids = coarse_pitch(np.full((2, 7), 200.0, dtype=np.float32))
    assert ids.dtype == np.int64 and ids.shape == (2, 7)


def test_coarse_pitch_treats_non_finite_pitch_as_unvoiced() -> None:
    assert coarse_pitch(np.array([np.nan, np.inf, -np.inf])).tolist() == [1, 1, 1]


# --- every method: the frame grid and the output contract ----------------------------------------


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_clip_in_a_batch_gets_n_over_160_plus_one_frames(
    method: str, grid_pitch: Callable[[str], list[np.ndarray]]
) -> None:
    assert [p.shape for p in grid_pitch(method)] == [(_expected_frames(n),) for n in CLIP_LENGTHS]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_output_is_finite_non_negative_float32(
    method: str, grid_pitch: Callable[[str], list[np.ndarray]]
) -> None:
    pitch = np.concatenate(grid_pitch(method))
    assert pitch.dtype == np.float32
    assert np.all(np.isfinite(pitch)) and np.all(pitch >= 0)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_empty_batch_gives_empty_list(method: str, extractors: dict[str, PitchExtractor]) -> None:
    assert extractors[method].extract([]) == []


def test_stereo_input_is_refused(extractors: dict[str, PitchExtractor]) -> None:
    with pytest.raises(ValueError, match="mono"):
        extractors["pm"].extract([np.zeros((1600, 2), dtype=np.float32)])


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dio"):
        load_pitch_extractor("dio", assets=AssetStore(None))


def test_extractor_reports_its_method(extractors: dict[str, PitchExtractor]) -> None:
    assert {m: e.method for m, e in extractors.items()} == {m: m for m in ALL_METHODS}


def test_grid_fitting_pads_short_output_with_unvoiced_frames() -> None:
    assert fit_to_grid(np.array([100.0, 110.0]), 480).tolist() == [100.0, 110.0, 0.0, 0.0]


def test_grid_fitting_trims_long_output() -> None:
    assert fit_to_grid(np.array([100.0, 110.0, 120.0]), 159).tolist() == [100.0]


def test_grid_fitting_zeroes_non_finite_values_and_keeps_high_pitch() -> None:
    fitted = fit_to_grid(np.array([np.nan, np.inf, 1500.0]), 320)
    assert fitted.tolist() == [0.0, 0.0, 1500.0] and fitted.dtype == np.float32


# --- trained methods: accuracy, silence, order -----------------------------------------------------


@pytest.mark.parametrize(("method", "f0"), [(m, f) for m, freqs in TONES.items() for f in freqs])
def test_vibrato_tone_is_tracked_within_a_semitone(
    method: str, f0: float, tone_pitch: Callable[[str], dict[float, np.ndarray]]
) -> None:
    assert _share_within_a_semitone(tone_pitch(method)[f0], f0) >= 0.9


@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_silence_is_unvoiced(method: str, extractors: dict[str, PitchExtractor]) -> None:
    (pitch,) = extractors[method].extract([np.zeros(SILENCE_SAMPLES, dtype=np.float32)])
    assert pitch.size == _expected_frames(SILENCE_SAMPLES) and not np.any(pitch)


@pytest.mark.parametrize("method", ["crepe-tiny", "pm", "harvest"])  # crepe runs crepe-tiny's code
def test_batch_results_come_back_in_input_order(method: str, extractors: dict[str, PitchExtractor]) -> None:
    high, low = harmonic_tone(440.0, 0.6, SR), harmonic_tone(110.0, 0.3, SR)
    pitch_high, pitch_low = extractors[method].extract([high, low])
    assert np.median(pitch_high[pitch_high > 0]) > 2 * np.median(pitch_low[pitch_low > 0])


# --- pm: Praat's frames placed by their times ----------------------------------------------------


def test_praat_values_are_moved_onto_the_grid_by_their_times() -> None:
    from rvc_core.pitch.praat import place_on_grid

    times = 0.033 + 0.01 * np.arange(20)  # Praat's first frame is rarely at a multiple of 10 ms
    grid = 0.01 * np.arange(30)
    placed = place_on_grid(times, 100.0 + 1000.0 * times, grid.size)  # a glide, linear in time
    between = (grid >= times[0]) & (grid <= times[-1])
    np.testing.assert_allclose(placed[between], 100.0 + 1000.0 * grid[between])


def test_grid_frames_far_outside_praat_frames_are_unvoiced() -> None:
    from rvc_core.pitch.praat import place_on_grid

    times = 0.033 + 0.01 * np.arange(20)
    grid = 0.01 * np.arange(30)
    placed = place_on_grid(times, np.full(times.size, 200.0), grid.size)
    far = (grid < times[0] - 0.005) | (grid > times[-1] + 0.005)
    assert not np.any(placed[far]) and np.all(placed[~far] == 200.0)


def test_praat_unvoiced_frames_stay_unvoiced_on_the_grid() -> None:
    from rvc_core.pitch.praat import place_on_grid

    times = 0.03 + 0.01 * np.arange(5)
    placed = place_on_grid(times, np.array([200.0, 200.0, 0.0, 200.0, 200.0]), 10)
    assert placed.tolist() == [0, 0, 0, 200, 200, 0, 200, 200, 0, 0]


# --- rmvpe: the official file --------------------------------------------------------------------


def _official_shapes() -> dict[str, tuple[int, ...]]:
    from rvc_core.pitch.rmvpe import official_state_dict_shapes

    return official_state_dict_shapes()


def test_full_size_rmvpe_state_dict_matches_the_official_file_spec() -> None:
    from rvc_core.pitch.rmvpe_net import RmvpeNet

    ours = {k: tuple(v.shape) for k, v in RmvpeNet().state_dict().items()}
    assert ours == _official_shapes()


def test_official_file_spec_has_the_size_of_the_published_rmvpe_pt() -> None:
    # rmvpe.pt is 181 184 272 bytes of fp16 tensors plus pickle overhead: 2 bytes per value.
    values = sum(int(np.prod(shape)) for shape in _official_shapes().values())
    assert 180_000_000 < 2 * values < 181_184_272


def _official_layout_file(folder: Path) -> Path:
    """A file laid out like the official rmvpe.pt (a plain dict of fp16 tensors and int64
    counters), built from the spec table alone."""
    import torch

    from rvc_core.pitch.rmvpe import STATE_DICT_SPEC

    state: dict[str, torch.Tensor] = {}
    for index, line in enumerate(STATE_DICT_SPEC.read_text().splitlines()[1:]):
        key, shape, kind = line.split("\t")
        if kind == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64)
        else:  # a distinct value per tensor shows each one lands under its own name
            value = 1.0 + index / 1000 if key.endswith("running_var") else (index % 89 - 44) / 1000
            state[key] = torch.full(json.loads(shape), value, dtype=torch.float16)
    torch.save(state, folder / "rmvpe.pt")
    return folder / "rmvpe.pt"


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An assets folder holding an official-layout rmvpe.pt (180 MB: built once per module)."""
    folder = tmp_path_factory.mktemp("assets")
    _official_layout_file(folder)
    return folder


@pytest.fixture(scope="module")
def official_rmvpe(official_folder: Path) -> PitchExtractor:
    return load_pitch_extractor("rmvpe", assets=AssetStore(official_folder))


def test_official_layout_fp16_checkpoint_loads_strictly(
    official_folder: Path, official_rmvpe: PitchExtractor
) -> None:
    import torch

    saved = torch.load(official_folder / "rmvpe.pt", weights_only=True)
    loaded = official_rmvpe.net.state_dict()  # type: ignore[attr-defined]
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k].float(), saved[k].float()) for k in saved)


def test_official_size_network_extracts_on_the_frame_grid(official_rmvpe: PitchExtractor) -> None:
    (pitch,) = official_rmvpe.extract([harmonic_tone(200.0, 0.1, SR)])
    assert pitch.shape == (_expected_frames(1600),)


def test_rmvpe_checkpoint_with_missing_tensors_is_corrupt(tmp_path: Path) -> None:
    import torch

    torch.save({"cnn.bias": torch.zeros(3)}, tmp_path / "rmvpe.pt")
    with pytest.raises(AssetCorrupt, match="missing"):
        load_pitch_extractor("rmvpe", assets=AssetStore(tmp_path))


def test_rmvpe_file_that_is_not_a_checkpoint_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "rmvpe.pt").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(AssetCorrupt):
        load_pitch_extractor("rmvpe", assets=AssetStore(tmp_path))


def test_rmvpe_without_its_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(AssetMissing, match="download"):
        load_pitch_extractor("rmvpe", assets=AssetStore(tmp_path))


def test_random_rmvpe_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_pitch_extractor("rmvpe", assets=AssetStore(None))
    assert any("RANDOM" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_random_full_rmvpe_has_the_official_state_dict_layout(caplog: pytest.LogCaptureFixture) -> None:
    from rvc_core.pitch.rmvpe import RmvpeExtractor

    with caplog.at_level(logging.WARNING):
        extractor = load_pitch_extractor("rmvpe", assets=AssetStore.random_full())
    assert isinstance(extractor, RmvpeExtractor)
    ours = {k: tuple(v.shape) for k, v in extractor.net.state_dict().items()}
    assert ours == _official_shapes()
    assert any("random-full" in r.getMessage() for r in caplog.records)


# --- rmvpe: front end, decoding, batching -----------------------------------------------------------


def test_rmvpe_mel_matches_librosa_with_rvc_settings() -> None:
    import librosa
    import torch

    from rvc_core.pitch.rmvpe import LogMel

    clip = harmonic_tone(180.0, 0.25, SR)
    ours = LogMel(torch.device("cpu"))([clip])[0].numpy()
    magnitude = librosa.feature.melspectrogram(
        y=clip,
        sr=SR,
        n_fft=1024,
        hop_length=HOP,
        win_length=1024,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=128,
        fmin=30,
        fmax=8000,
        htk=True,
    )
    np.testing.assert_allclose(ours, np.log(np.maximum(magnitude, 1e-5)), atol=5e-3)


def test_rmvpe_decoding_takes_the_weighted_cents_around_the_peak() -> None:
    import torch

    from rvc_core.pitch.rmvpe import decode_salience

    salience = torch.zeros(1, 360)
    salience[0, 100], salience[0, 101], salience[0, 300] = 0.9, 0.3, 0.5  # bin 300 is too far away
    cents = (0.9 * (20 * 100 + 1997.3794084376191) + 0.3 * (20 * 101 + 1997.3794084376191)) / 1.2
    assert decode_salience(salience).item() == pytest.approx(10 * 2 ** (cents / 1200), rel=1e-5)


def test_rmvpe_decoding_at_the_lowest_bin_uses_only_real_bins() -> None:
    import torch

    from rvc_core.pitch.rmvpe import decode_salience

    salience = torch.zeros(1, 360)
    salience[0, 0], salience[0, 359] = 0.8, 0.7
    assert decode_salience(salience).item() == pytest.approx(10 * 2 ** (1997.3794084376191 / 1200), rel=1e-5)


def test_rmvpe_frames_at_or_below_threshold_are_unvoiced() -> None:
    import torch

    from rvc_core.pitch.rmvpe import decode_salience

    salience = torch.zeros(2, 360)
    salience[0, 50], salience[1, 50] = 0.03, 0.031
    f0 = decode_salience(salience)
    assert f0[0].item() == 0 and f0[1].item() > 0


def test_rmvpe_longest_clip_of_a_batch_gets_its_solo_result(extractors: dict[str, PitchExtractor]) -> None:
    rng = np.random.default_rng(1)
    long, short = rng.standard_normal(8000).astype(np.float32), rng.standard_normal(2000).astype(np.float32)
    batched, _ = extractors["rmvpe"].extract([long, short])
    (solo,) = extractors["rmvpe"].extract([long])
    np.testing.assert_allclose(batched, solo, rtol=1e-4, atol=1e-3)


def test_rmvpe_batched_clips_match_clips_run_alone() -> None:
    import torch

    from rvc_core.pitch.rmvpe import RmvpeExtractor, build_random_net
    from rvc_core.pitch.rmvpe_net import RmvpeArchitecture

    # Wider than TINY and perturbed (BatchNorms not identities), so that padding shows: batching
    # clips of different padded sizes together moved short clips' f0 by hundreds of Hz.
    net = build_random_net(RmvpeArchitecture(n_blocks=1, inter_layers=1, en_out_channels=4, gru_hidden=16))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    extractor = RmvpeExtractor(net)
    # Three lengths share one padded size (352 frames), the others each have their own.
    lengths = [56000, 55000, 51300, 16000, 15000, 8000, 2000, 400]
    clips = [_noisy_tone(n, seed=i) for i, n in enumerate(lengths)]
    batched = extractor.extract(clips)
    for clip, together in zip(clips, batched, strict=True):
        (alone,) = extractor.extract([clip])
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-2)


def test_rmvpe_groups_hold_one_padded_size() -> None:
    from rvc_core.pitch.rmvpe import length_groups

    lengths = [16000, 3000, 48000, 800, 16100, 9000, 3100]
    groups = list(length_groups(lengths, 10**9, bucket=lambda n: n // 10000))
    assert [sorted(lengths[i] for i in g) for g in groups] == [
        [800, 3000, 3100, 9000],
        [16000, 16100],
        [48000],
    ]


def test_rmvpe_small_batch_budget_still_returns_every_clip_in_order() -> None:
    extractor = load_pitch_extractor("rmvpe", assets=AssetStore(None), batch_seconds=0.2)
    pitch = extractor.extract([np.zeros(n, dtype=np.float32) for n in CLIP_LENGTHS])
    assert [p.size for p in pitch] == [_expected_frames(n) for n in CLIP_LENGTHS]


def test_rmvpe_batches_hold_at_most_the_budget() -> None:
    from rvc_core.pitch.rmvpe import length_groups

    lengths = [16000, 3000, 48000, 800, 16000, 9000, 100000]
    groups = list(length_groups(lengths, 40000))
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 40000 for g in groups)


# --- packaging -------------------------------------------------------------------------------------


def test_importing_pitch_does_not_load_torch_or_praat() -> None:
    code = "import sys, rvc_core.pitch; print(sorted({'torch', 'parselmouth', 'pyworld'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["rmvpe", "crepe-tiny", "crepe"])
def test_cuda_extraction_keeps_the_frame_grid(method: str) -> None:
    extractor = load_pitch_extractor(method, assets=AssetStore(None), device="cuda")
    pitch = extractor.extract([_noisy_tone(n, seed=i) for i, n in enumerate(CLIP_LENGTHS)])
    assert [p.shape for p in pitch] == [(_expected_frames(n),) for n in CLIP_LENGTHS]


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["crepe-tiny", "crepe"])
def test_cuda_crepe_tracks_a_tone(method: str) -> None:
    extractor = load_pitch_extractor(method, assets=AssetStore(None), device="cuda")
    (pitch,) = extractor.extract([_vibrato_tone(220.0)])
    assert _share_within_a_semitone(pitch, 220.0) >= 0.9


@pytest.mark.gpu
def test_cuda_rmvpe_half_precision_agrees_with_cpu(tmp_path: Path) -> None:
    import torch

    from rvc_core.pitch.rmvpe import RmvpeExtractor, build_random_net
    from rvc_core.pitch.rmvpe_net import OFFICIAL

    clip = harmonic_tone(200.0, 0.5, SR)
    saliences = []
    for device in ("cpu", "cuda"):
        extractor = RmvpeExtractor(build_random_net(OFFICIAL), device=device)
        mel = extractor.mel([clip])
        mel = torch.nn.functional.pad(mel, (0, 64 - mel.shape[2]), mode="reflect")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
            saliences.append(extractor.net(mel).float().cpu())
    torch.testing.assert_close(saliences[1], saliences[0], atol=2e-2, rtol=0)
