"""The training guards: non-finite gradients skip a step in every precision (counted by network and
kind), and out of memory in validation halves its batch instead of failing (tiny preset, CPU)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rvc_core.errors import NonFiniteLoss, TrainingOutOfMemory
from rvc_core.models import losses as losses_module
from rvc_core.models.generator import Generator
from rvc_core.train import TrainConfig, train
from rvc_core.train import step as step_module
from rvc_core.train.checkpoint import CHECKPOINT_NAME
from rvc_core.train.precision import SKIP_COUNTER_NAMES, GuardedStepper, Precision
from tests.factories_train import FakeWorkDir, make_prepared_workdir

# 5 segments: 4 trained on in 2 batches of 2, 1 held out (as in test_train.py).
BASE = TrainConfig(
    version="v2",
    sample_rate=32000,
    preset="tiny",
    epochs=2,
    batch_size=2,
    seed=7,
    learning_rate=1e-3,
    log_every_steps=2,
    deterministic=True,
)
STEPS_PER_EPOCH = 2
NO_SKIPS = dict.fromkeys(SKIP_COUNTER_NAMES, 0)


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> FakeWorkDir:
    return make_prepared_workdir(
        tmp_path_factory.mktemp("prepared"), segments=5, seconds=0.8, sample_rate=32000
    )


# --- the stepper, one 3-weight model ----------------------------------------------------------------
class _NanGradient(torch.autograd.Function):
    """Identity forward (a finite loss), NaN gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


def nan_gradient(x: torch.Tensor) -> torch.Tensor:
    return _NanGradient.apply(x)  # type: ignore[no-untyped-call]


def guarded_step(
    stepper: GuardedStepper,
    weights: torch.nn.Parameter,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    network: str = "g",
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(weights)
    stepper.scale_loss(loss).backward()
    stepper.step(optimizer, [weights], torch.isfinite(loss), network=network)
    stepper.end_step()


def counts(stepper: GuardedStepper) -> dict[str, int]:
    return stepper.skip_summary(stepper.skip_counts.tolist())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_nonfinite_gradients_behind_a_finite_loss_skip_the_step_and_leave_the_optimiser_alone(
    precision: str,
) -> None:
    stepper = GuardedStepper(Precision(precision, "cpu"), "cpu")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=True)
    guarded_step(stepper, weights, optimizer, lambda w: (2 * w).sum())  # a good step first
    before_weights = weights.detach().clone()
    before_state = copy.deepcopy(optimizer.state_dict())

    guarded_step(stepper, weights, optimizer, lambda w: nan_gradient((2 * w).sum()), network="d")

    assert torch.equal(weights.detach(), before_weights)
    after_state = optimizer.state_dict()
    for key, value in before_state["state"][0].items():
        assert torch.equal(after_state["state"][0][key], value), key
    assert int(stepper.skipped_steps) == 1 and int(stepper.consecutive_skips) == 1
    assert counts(stepper) == {**NO_SKIPS, "d_nonfinite_grad": 1}

    guarded_step(stepper, weights, optimizer, lambda w: (2 * w).sum())  # training goes on
    assert (weights.detach() < before_weights).all()
    assert int(stepper.consecutive_skips) == 0


def test_a_nonfinite_loss_is_counted_as_such_not_as_bad_gradients() -> None:
    stepper = GuardedStepper(Precision("fp32", "cpu"), "cpu")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=True)
    guarded_step(stepper, weights, optimizer, lambda w: (w * float("inf")).sum())
    assert torch.equal(weights.detach(), torch.ones(3))
    assert counts(stepper) == {**NO_SKIPS, "g_nonfinite_loss": 1}


def test_fp16_overflow_is_counted_as_a_scaler_skip_and_fails_only_once_the_scale_is_down_to_one() -> None:
    stepper = GuardedStepper(Precision("fp16", "cpu"), "cpu")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=True)
    guarded_step(stepper, weights, optimizer, lambda w: (w * 1e36).sum())  # scaled gradients overflow
    assert counts(stepper) == {**NO_SKIPS, "g_scaler_overflow": 1}
    assert int(stepper.skipped_steps) == 0  # the scaler's normal search, not a failed step
    stepper._scale.fill_(1.0)
    guarded_step(stepper, weights, optimizer, lambda w: nan_gradient((2 * w).sum()))
    assert torch.equal(weights.detach(), torch.ones(3))
    assert counts(stepper) == {**NO_SKIPS, "g_scaler_overflow": 2}
    assert int(stepper.skipped_steps) == 1 and int(stepper.consecutive_skips) == 1


def test_skip_counts_travel_with_the_stepper_state() -> None:
    stepper = GuardedStepper(Precision("fp32", "cpu"), "cpu")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=True)
    guarded_step(stepper, weights, optimizer, lambda w: nan_gradient(w.sum()))
    restored = GuardedStepper(Precision("fp32", "cpu"), "cpu")
    restored.load_state_dict(stepper.state_dict())
    assert counts(restored) == {**NO_SKIPS, "g_nonfinite_grad": 1}
    legacy = {k: v for k, v in stepper.state_dict().items() if k != "skip_counts"}
    restored.load_state_dict(legacy)  # a checkpoint written before the counts existed still loads


# --- the loop --------------------------------------------------------------------------------------
def nan_mel_gradient(first_calls: int | None, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The mel loss stays finite but its gradient is NaN for the first `first_calls` steps (None: always)."""
    real = step_module.mel_reconstruction_loss
    calls: list[int] = []

    def patched(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        loss = real(*args, **kwargs)
        return nan_gradient(loss) if first_calls is None or len(calls) <= first_calls else loss

    monkeypatch.setattr(step_module, "mel_reconstruction_loss", patched)
    return calls


def test_nonfinite_generator_gradients_skip_its_steps_and_are_counted_per_epoch(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvc_core.job_stages import training_metrics
    from rvc_core.models import build_generator

    nan_mel_gradient(STEPS_PER_EPOCH, monkeypatch)  # all of epoch 1
    config = dataclasses.replace(BASE, max_nonfinite_steps=3, save_every=1)
    result = train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert (result.status, result.skipped_steps) == ("finished", STEPS_PER_EPOCH)
    assert result.skips == {**NO_SKIPS, "g_nonfinite_grad": STEPS_PER_EPOCH}
    assert [h.skips for h in result.history] == [
        {**NO_SKIPS, "g_nonfinite_grad": STEPS_PER_EPOCH},
        NO_SKIPS,
    ]
    torch.manual_seed(BASE.seed)  # the loop's initialisation, reproduced
    initial = build_generator("v2", 32000, preset="tiny").state_dict()
    after_epoch_1 = torch.load(tmp_path / "generator_e1.pt", weights_only=True)
    assert all(torch.equal(after_epoch_1[k], initial[k]) for k in initial)
    final = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    assert all(torch.isfinite(t).all() for t in final.values())
    # report.json's training section carries the counts (by epoch, in its history).
    metrics = training_metrics(result)
    assert metrics["history"][0]["skips"]["g_nonfinite_grad"] == STEPS_PER_EPOCH
    assert metrics["skipped_nonfinite_steps"] == STEPS_PER_EPOCH


def test_nonfinite_discriminator_gradients_are_counted_against_the_discriminator(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = losses_module.discriminator_loss
    monkeypatch.setattr(losses_module, "discriminator_loss", lambda *a, **k: nan_gradient(real(*a, **k)))
    config = dataclasses.replace(BASE, epochs=1, max_nonfinite_steps=5)
    result = train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert result.skips == {**NO_SKIPS, "d_nonfinite_grad": STEPS_PER_EPOCH}
    assert result.history[0].steps == STEPS_PER_EPOCH  # the losses were finite: they count in the means
    assert all(math.isfinite(v) for v in result.history[0].losses.values())


def test_training_fails_after_too_many_steps_with_nonfinite_gradients_in_a_row(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = nan_mel_gradient(None, monkeypatch)
    config = dataclasses.replace(BASE, epochs=10, max_nonfinite_steps=3, log_every_steps=50)
    expected = "3 consecutive training steps had a non-finite loss or non-finite gradients"
    with pytest.raises(NonFiniteLoss, match=expected) as failure:
        train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert failure.value.code == "non_finite_loss"
    assert len(calls) == 3


# --- out of memory in validation -------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir_two_held_out(tmp_path_factory: pytest.TempPathFactory) -> FakeWorkDir:
    """6 segments with validation_fraction 0.34: 4 trained on, 2 held out (a validation batch of 2)."""
    return make_prepared_workdir(
        tmp_path_factory.mktemp("prepared2"), segments=6, seconds=0.8, sample_rate=32000
    )


def test_out_of_memory_in_validation_halves_its_batch_and_retries(
    workdir_two_held_out: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Generator.infer
    sizes: list[int] = []
    failures: list[int] = []

    def once_out_of_memory_above_one(self: Generator, phone: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        sizes.append(phone.shape[0])
        if phone.shape[0] > 1 and not failures:
            failures.append(phone.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, phone, *args, **kwargs)

    monkeypatch.setattr(Generator, "infer", once_out_of_memory_above_one)
    config = dataclasses.replace(BASE, validation_fraction=0.34)
    result = train(workdir_two_held_out.root, config, ckpt_dir=tmp_path, device="cpu")
    assert result.validation_segments == 2
    assert result.status == "finished"
    assert failures == [2]
    reductions = [(r.old, r.new, r.epoch, r.phase) for r in result.batch_size_reductions]
    assert reductions == [(2, 1, 1, "validation")]
    assert result.batch_size == 2  # training keeps its batch size
    assert sizes == [2, 1, 1, 1, 1]  # the failed try, then both epochs at the halved batch size
    assert all(math.isfinite(h.validation_mel) for h in result.history)


def test_out_of_memory_in_validation_at_batch_size_one_fails_clearly(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Generator, "infer", always_out_of_memory)
    with pytest.raises(TrainingOutOfMemory, match="validation even at batch size 1"):
        train(workdir.root, dataclasses.replace(BASE, epochs=1), ckpt_dir=tmp_path, device="cpu")


# --- precision on request -----------------------------------------------------------------------------
def test_precision_is_chosen_where_the_device_runs_it_and_refused_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rvc_core.errors import ConfigError
    from rvc_core.train import precision as precision_module
    from rvc_core.train.precision import choose_precision

    assert choose_precision("cpu") == Precision("fp32", "cpu")
    assert choose_precision("cpu", "fp32") == Precision("fp32", "cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        choose_precision("cpu", "fp16")
    with pytest.raises(ConfigError, match="must be one of"):
        choose_precision("cpu", "fp8")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16"):
        choose_precision("cpu", "bf16")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("cpu", "bf16") == Precision("bf16", "cpu")


@pytest.mark.skipif(
    not __import__("rvc_core.train.precision", fromlist=["x"]).cpu_has_native_bf16(),
    reason="this CPU has no native bf16",
)
def test_bf16_on_a_cpu_with_native_bf16_trains_with_finite_losses_and_fp32_weights(
    workdir: FakeWorkDir, tmp_path: Path
) -> None:
    config = dataclasses.replace(BASE, precision="bf16", epochs=1)
    assert config.training_hash() == BASE.training_hash()  # a run may resume in another precision
    result = train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert result.status == "finished" and result.skipped_steps == 0
    assert all(math.isfinite(v) for v in result.history[-1].losses.values())
    final = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["generator"]
    assert all(t.dtype == torch.float32 for t in final.values() if t.is_floating_point())
    assert torch.backends.mkldnn.enabled  # bf16 keeps oneDNN's kernels, and the switch is restored
