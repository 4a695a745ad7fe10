"""The fast paths of the training step keep its meaning: no host sync, the split discriminator pass,
length bucketing, and the compiled step (tiny preset, CPU)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rvc_core.models import build_discriminator, build_generator
from rvc_core.spec import SPECTROGRAMS
from rvc_core.train import step as step_module
from rvc_core.train.data import Batch, ResidentDataset
from rvc_core.train.loop import adamw
from rvc_core.train.precision import GuardedStepper, choose_precision

SAMPLE_RATE = 32000
SPEC = SPECTROGRAMS[SAMPLE_RATE]


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_trainee(seed: int = 0) -> step_module.Trainee:
    torch.manual_seed(seed)
    g = build_generator("v2", SAMPLE_RATE, preset="tiny").train()
    d = build_discriminator("v2", preset="tiny").train()
    g_params, d_params = list(g.parameters()), list(d.parameters())
    return step_module.Trainee(g, d, adamw(g_params, 1e-3), adamw(d_params, 1e-3), g_params, d_params)


def make_dataset(frames: tuple[int, ...]) -> ResidentDataset:
    gen = torch.Generator().manual_seed(1)
    hop = SPEC.hop_length
    n_spec = SPEC.n_fft // 2 + 1

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    return ResidentDataset(
        ids=tuple(f"s{i}" for i in range(len(frames))),
        frames=frames,
        speaker_ids=(0,) * len(frames),
        phone=[rand(t, 768) for t in frames],
        pitch=[torch.randint(1, 256, (t,), generator=gen) for t in frames],
        pitchf=[100 + 200 * rand(t) for t in frames],
        spec=[rand(n_spec, t) for t in frames],
        mel=[rand(SPEC.n_mels, t) - 5 for t in frames],
        wave=[rand(t * hop) - 0.5 for t in frames],
        hop=hop,
        storage="cpu",
        device="cpu",
    )


def run_step(trainee: step_module.Trainee, batch: Batch, seed: int = 3) -> step_module.StepResult:
    precision = choose_precision("cpu")
    torch.manual_seed(seed)
    return step_module.train_step(
        trainee, batch, precision=precision, stepper=GuardedStepper(precision, "cpu"), spec=SPEC
    )


def test_a_training_step_reads_nothing_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    trainee = make_trainee()
    batch = make_dataset((48, 60)).collate([0, 1])
    run_step(trainee, batch)  # the first step builds cached tables (the mel filterbank) once
    calls: list[str] = []

    def spy(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def recorded(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(self, *args, **kwargs)

        return recorded

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    run_step(trainee, batch)
    assert calls == []


def test_the_discriminator_gives_the_same_outputs_to_one_input_as_to_a_real_fake_pair() -> None:
    torch.manual_seed(0)
    d = build_discriminator("v2", preset="tiny")
    real, fake = torch.randn(2, 1, 6400), torch.randn(2, 1, 6400)
    real_logits, fake_logits, real_fmaps, fake_fmaps = d(real, fake)
    for paired_logits, paired_fmaps, alone in (
        (real_logits, real_fmaps, d.features(real)),
        (fake_logits, fake_fmaps, d.features(fake)),
    ):
        for a, b in zip(paired_logits, alone[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for layers_a, layers_b in zip(paired_fmaps, alone[1], strict=True):
            for a, b in zip(layers_a, layers_b, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_batches_pad_their_frame_axis_up_to_the_length_multiple() -> None:
    data = make_dataset((45, 70))
    batch = data.collate([0, 1], length_multiple=64)
    assert batch.phone.shape[1] == 128 and batch.spec.shape[-1] == 128
    assert batch.wave.shape[-1] == 128 * SPEC.hop_length
    assert batch.lengths.tolist() == [45, 70]
    assert not batch.phone[1, 70:].any()


def test_padding_the_frame_axis_leaves_the_step_losses_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # The posterior noise is drawn over the padded shape, so its values move with the padding;
    # without noise the step must not see the padding at all.
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    data = make_dataset((50, 60))
    tight = run_step(make_trainee(), data.collate([0, 1]))
    padded = run_step(make_trainee(), data.collate([0, 1], length_multiple=64))
    torch.testing.assert_close(tight.losses, padded.losses, rtol=1e-3, atol=1e-4)


def test_compile_is_off_by_default_where_it_does_not_win() -> None:
    from rvc_core.train.compiled import compile_wins

    assert compile_wins("cpu") is False


@pytest.mark.slow
def test_a_compiled_step_matches_the_eager_step_and_recompiles_stay_few() -> None:
    import torch._dynamo

    from rvc_core.train.compiled import LENGTH_MULTIPLE, compile_counters, compile_trainee

    torch._dynamo.reset()
    eager = make_trainee()
    compiled = copy.deepcopy(eager)
    compile_trainee(compiled)
    data = make_dataset((50, 60, 70, 90, 100, 110))
    batch = data.collate([0, 1], length_multiple=LENGTH_MULTIPLE)
    expected = run_step(eager, batch)
    got = run_step(compiled, batch)
    # Losses only: after one AdamW step every weight moves by ~lr * sign(grad), so a gradient near
    # zero flips with rounding and the weights themselves are no fair comparison.
    torch.testing.assert_close(got.losses, expected.losses, rtol=2e-3, atol=2e-3)
    # Five more lengths fall into two buckets (64 and 128 frames): no graph per length.
    before = compile_counters()["recompiles"]
    for pair in ([2, 3], [3, 4], [4, 5], [0, 5], [1, 2]):
        run_step(compiled, data.collate(pair, length_multiple=LENGTH_MULTIPLE))
    assert compile_counters()["recompiles"] - before <= 2


def test_compile_setting_does_not_change_the_training_hash() -> None:
    from rvc_core.train import TrainConfig

    base = TrainConfig(preset="tiny")
    assert base.training_hash() == dataclasses.replace(base, compile=True).training_hash()


def test_the_cpu_picks_onednn_for_full_width_discriminators_only() -> None:
    from rvc_core.train.kernels import use_onednn

    assert use_onednn("cpu", build_discriminator("v2", preset="full")) is True
    assert use_onednn("cpu", build_discriminator("v2", preset="tiny")) is False
    assert use_onednn("cuda", build_discriminator("v2", preset="tiny")) is True
    assert use_onednn("cpu", build_discriminator("v2", preset="tiny"), "bf16") is True  # fast only there


def test_the_step_computes_the_same_losses_with_either_convolution_kernels() -> None:
    from rvc_core.train.kernels import convolution_kernels

    data = make_dataset((50, 60))
    reference = make_trainee()
    with_onednn = run_step(reference, data.collate([0, 1]))
    trainee = make_trainee()
    with convolution_kernels("cpu", trainee.discriminator) as onednn:
        assert onednn is False and torch.backends.mkldnn.enabled is False
        without = run_step(trainee, data.collate([0, 1]))
    assert torch.backends.mkldnn.enabled is True  # restored for whatever runs next
    torch.testing.assert_close(without.losses, with_onednn.losses, rtol=1e-4, atol=1e-5)
    # The discriminator's gradients come from identical weights (before any update): they agree too.
    for a, b in zip(trainee.d_params, reference.d_params, strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6)
