"""The trainer: data, the loop, checkpoints, resume, validation, recovery (tiny preset, CPU)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rvc_core.errors import ConfigMismatch, NonFiniteLoss, TrainingOutOfMemory, WorkDirIncomplete
from rvc_core.progress import ProgressEvent
from rvc_core.train import TrainConfig, TrainResult, train
from rvc_core.train import loop as loop_module
from rvc_core.train import step as step_module
from rvc_core.train.batch_size import MAX_BATCH_SIZE, batch_size_for_memory, choose_batch_size
from rvc_core.train.checkpoint import CHECKPOINT_NAME
from rvc_core.train.data import epoch_plan, split_batches, split_validation
from tests.factories_train import FakeWorkDir, make_prepared_workdir

# 5 segments: 4 trained on in 2 batches of 2, 1 held out.
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


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Tiny convolutions on a shared 2-core machine run ~10x faster on one thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> FakeWorkDir:
    return make_prepared_workdir(
        tmp_path_factory.mktemp("prepared"), segments=5, seconds=0.8, sample_rate=32000
    )


@dataclasses.dataclass
class Run:
    result: TrainResult
    events: list[ProgressEvent]
    ckpt_dir: Path
    tensorboard_dir: Path


@pytest.fixture(scope="module")
def straight_run(workdir: FakeWorkDir, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """BASE trained for its 2 epochs without interruption (the reference the resume tests match)."""
    root = tmp_path_factory.mktemp("straight")
    events: list[ProgressEvent] = []
    config = dataclasses.replace(BASE, tensorboard_dir=root / "tb")
    result = train(workdir.root, config, ckpt_dir=root / "ckpt", device="cpu", progress=events.append)
    return Run(result, events, root / "ckpt", root / "tb")


def final_generator(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_dir / CHECKPOINT_NAME, weights_only=True)["generator"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def stop_after(calls: int) -> Callable[[], bool]:
    """A should_stop that lets `calls` steps run, then asks to stop."""
    counter = itertools.count(1)
    return lambda: next(counter) > calls


# --- the loop -------------------------------------------------------------------------------------
def test_mel_loss_falls_over_epochs(straight_run: Run) -> None:
    history = straight_run.result.history
    assert [h.epoch for h in history] == [1, 2]
    assert history[-1].losses["g_mel"] < history[0].losses["g_mel"]


def test_finished_run_reports_epochs_steps_and_the_exported_generator(straight_run: Run) -> None:
    result = straight_run.result
    assert (result.status, result.epoch, result.step) == ("finished", 2, 2 * STEPS_PER_EPOCH)
    assert result.best_epoch in (1, 2)
    assert result.best_validation_mel == min(h.validation_mel for h in result.history)
    assert result.generator_weights is not None and result.generator_weights.exists()
    from rvc_core.models import build_generator

    generator = build_generator("v2", 32000, preset="tiny")
    generator.load_state_dict(torch.load(result.generator_weights, weights_only=True), strict=True)


def test_validation_segments_are_held_out_of_training(straight_run: Run, workdir: FakeWorkDir) -> None:
    result = straight_run.result
    assert result.validation_segments >= 1
    assert result.train_segments + result.validation_segments == len(workdir.segment_ids)


def test_progress_events_come_every_log_interval_and_at_each_epoch_end(straight_run: Run) -> None:
    events = straight_run.events
    assert all(e.stage == "train" and e.epochs == 2 for e in events)
    interval = [e for e in events if not e.message]
    epoch_ends = [e for e in events if e.message]
    assert [e.step for e in interval] == [2, 4]
    assert [e.epoch for e in epoch_ends] == [1, 2]
    assert all("validation_mel" in e.losses and e.learning_rate for e in epoch_ends)
    assert {"g_total", "d_total", "g_mel", "g_kl", "g_fm"} <= interval[0].losses.keys()


def test_tensorboard_gets_the_loss_and_learning_rate_scalars(straight_run: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight_run.tensorboard_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/g/total", "loss/d/total", "loss/g/mel", "loss/g/kl", "loss/g/fm", "learning_rate"} <= tags


def test_learning_rate_decays_once_per_epoch(straight_run: Run) -> None:
    first, second = (h.learning_rate for h in straight_run.result.history)
    assert first == pytest.approx(BASE.learning_rate)
    assert second == pytest.approx(BASE.learning_rate * 0.999875)


# --- resume ---------------------------------------------------------------------------------------
def test_resume_after_an_epoch_matches_an_uninterrupted_run(
    straight_run: Run, workdir: FakeWorkDir, tmp_path: Path
) -> None:
    first = train(workdir.root, dataclasses.replace(BASE, epochs=1), ckpt_dir=tmp_path, device="cpu")
    assert (first.status, first.epoch) == ("finished", 1)
    resumed = train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu")
    assert [h.epoch for h in resumed.history] == [1, 2]  # epoch 1 is not repeated
    assert resumed.step == straight_run.result.step
    assert_same_weights(final_generator(tmp_path), final_generator(straight_run.ckpt_dir))


def test_resume_mid_epoch_matches_an_uninterrupted_run(
    straight_run: Run, workdir: FakeWorkDir, tmp_path: Path
) -> None:
    paused = train(
        workdir.root, BASE, ckpt_dir=tmp_path, device="cpu", should_stop=stop_after(STEPS_PER_EPOCH + 1)
    )
    assert (paused.status, paused.stop_reason, paused.epoch, paused.step) == ("paused", "should_stop", 1, 3)
    resumed = train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu")
    assert resumed.status == "finished"
    assert_same_weights(final_generator(tmp_path), final_generator(straight_run.ckpt_dir))
    assert [h.losses for h in resumed.history] == [h.losses for h in straight_run.result.history]


def test_resume_with_a_changed_config_is_refused_naming_the_field(
    straight_run: Run, workdir: FakeWorkDir, tmp_path: Path
) -> None:
    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(straight_run.ckpt_dir, ckpt_dir)
    with pytest.raises(ConfigMismatch, match="seed: 7 -> 8"):
        train(workdir.root, dataclasses.replace(BASE, seed=8), ckpt_dir=ckpt_dir, device="cpu")


def test_deadline_pauses_at_a_clean_point_and_leaves_a_checkpoint(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count(0.0, 1.0)  # every reading of the clock advances it by one "second"
    monkeypatch.setattr(loop_module, "monotonic", lambda: next(clock))
    result = train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu", deadline=14.0)
    assert (result.status, result.stop_reason) == ("paused", "deadline")
    assert 0 < result.step < 2 * STEPS_PER_EPOCH
    assert result.checkpoint.exists()
    monkeypatch.setattr(loop_module, "monotonic", lambda: next(clock))
    assert train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu").step == 2 * STEPS_PER_EPOCH


def test_long_runs_also_checkpoint_inside_an_epoch(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop_module.ckpt.save_checkpoint
    saved_positions: list[tuple[int, int]] = []

    def recording_save(ckpt_dir: Path, state: dict[str, Any]) -> float:
        saved_positions.append((state["run"]["epoch"], state["run"]["batches_done"]))
        return real(ckpt_dir, state)

    monkeypatch.setattr(loop_module.ckpt, "save_checkpoint", recording_save)
    config = dataclasses.replace(BASE, epochs=1, checkpoint_every_seconds=1e-9)
    train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert (0, 1) in saved_positions  # after the first of the epoch's two steps


def test_checkpoint_write_interrupted_leaves_the_previous_checkpoint_intact(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu", should_stop=stop_after(0))
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu", should_stop=stop_after(0))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


# --- recovery -------------------------------------------------------------------------------------
def nan_mel_loss(first_calls: int | None, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes the mel loss NaN for the first `first_calls` steps (None: always); returns a call counter."""
    real = step_module.mel_reconstruction_loss
    calls: list[int] = []

    def patched(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if first_calls is None or len(calls) <= first_calls else loss

    monkeypatch.setattr(step_module, "mel_reconstruction_loss", patched)
    return calls


def test_nonfinite_loss_steps_are_skipped_without_touching_the_weights(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvc_core.models import build_generator

    nan_mel_loss(STEPS_PER_EPOCH, monkeypatch)  # all of epoch 1
    config = dataclasses.replace(BASE, max_nonfinite_steps=3, save_every=1)
    result = train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert (result.status, result.skipped_steps) == ("finished", STEPS_PER_EPOCH)
    assert [h.steps for h in result.history] == [0, STEPS_PER_EPOCH]
    torch.manual_seed(BASE.seed)  # the loop's initialisation, reproduced
    initial = build_generator("v2", 32000, preset="tiny").state_dict()
    assert_same_weights(torch.load(tmp_path / "generator_e1.pt", weights_only=True), initial)
    assert all(torch.isfinite(t).all() for t in final_generator(tmp_path).values())


def test_a_skipped_step_leaves_the_epoch_mean_losses_finite(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_mel_loss(1, monkeypatch)  # only the first step
    result = train(workdir.root, dataclasses.replace(BASE, epochs=1), ckpt_dir=tmp_path, device="cpu")
    (epoch,) = result.history
    assert epoch.steps == STEPS_PER_EPOCH - 1
    assert all(math.isfinite(v) for v in epoch.losses.values())


def test_training_fails_after_too_many_nonfinite_steps_in_a_row(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = nan_mel_loss(None, monkeypatch)
    config = dataclasses.replace(BASE, epochs=10, max_nonfinite_steps=3, log_every_steps=50)
    with pytest.raises(NonFiniteLoss, match="3 consecutive training steps had a non-finite loss"):
        train(workdir.root, config, ckpt_dir=tmp_path, device="cpu")
    assert len(calls) == 3


def test_out_of_memory_halves_the_batch_and_finishes_the_epoch(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step_module.train_step
    failures: list[int] = []

    def once_out_of_memory(trainee: Any, batch: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(batch.size)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(trainee, batch, **kwargs)

    monkeypatch.setattr(step_module, "train_step", once_out_of_memory)
    result = train(workdir.root, dataclasses.replace(BASE, epochs=1), ckpt_dir=tmp_path, device="cpu")
    assert result.status == "finished"
    assert [(r.old, r.new, r.epoch) for r in result.batch_size_reductions] == [(2, 1, 1)]
    assert result.batch_size == 1
    assert result.step == 4  # the 4 training segments, one per step after the reduction
    assert result.history[0].steps == 4


def test_out_of_memory_at_batch_size_one_fails_clearly(
    workdir: FakeWorkDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(step_module, "train_step", always_out_of_memory)
    with pytest.raises(TrainingOutOfMemory, match="batch size 1"):
        train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu")


def fp16_step(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """One fp16-style guarded step of a 3-weight model; returns (weights after, stepper)."""
    from rvc_core.train.precision import GuardedStepper, Precision

    stepper = GuardedStepper(Precision("fp16", "cpu"), "cpu")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=True)
    loss = loss_of(weights)
    stepper.scale_loss(loss).backward()
    stepper.step(optimizer, [weights], torch.isfinite(loss))
    stepper.end_step()
    return weights.detach(), stepper


def test_fp16_step_with_a_finite_loss_updates_the_weights() -> None:
    weights, stepper = fp16_step(lambda w: (2 * w).sum())
    assert (weights < 1).all()
    assert int(stepper.skipped_steps) == 0


def test_fp16_step_with_a_nonfinite_loss_is_skipped_and_keeps_the_loss_scale() -> None:
    weights, stepper = fp16_step(lambda w: (w * float("inf")).sum())
    assert torch.equal(weights, torch.ones(3))
    assert int(stepper.skipped_steps) == 1
    assert float(stepper.scale) == 2.0**16


def test_fp16_gradient_overflow_skips_the_step_and_halves_the_scale_without_counting_a_bad_loss() -> None:
    weights, stepper = fp16_step(lambda w: (w * 1e36).sum())  # finite loss, scaled gradients overflow
    assert torch.equal(weights, torch.ones(3))
    assert int(stepper.skipped_steps) == 0
    assert float(stepper.scale) == 2.0**15


# --- initialisation and inputs --------------------------------------------------------------------
def test_pretrained_generator_is_loaded(workdir: FakeWorkDir, tmp_path: Path) -> None:
    from rvc_core.models import build_generator, to_legacy_state_dict

    torch.manual_seed(123)
    donor = build_generator("v2", 32000, preset="tiny").state_dict()
    path = tmp_path / "f0G32k.pth"
    torch.save({"model": {k: v.half() for k, v in to_legacy_state_dict(donor).items()}}, path)
    config = dataclasses.replace(BASE, pretrained_g=path)
    train(workdir.root, config, ckpt_dir=tmp_path / "ckpt", device="cpu", should_stop=stop_after(0))
    loaded = final_generator(tmp_path / "ckpt")
    assert_same_weights(loaded, {k: v.half().float() for k, v in donor.items()})


def test_training_without_pretrained_weights_warns_loudly(
    workdir: FakeWorkDir, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rvc_core.train.loop"):
        train(workdir.root, BASE, ckpt_dir=tmp_path, device="cpu", should_stop=stop_after(0))
    assert any("NO PRETRAINED GENERATOR" in r.getMessage() for r in caplog.records)


def test_missing_prepared_files_are_named(tmp_path: Path) -> None:
    fake = make_prepared_workdir(tmp_path / "wd", segments=3)
    (fake.root / "features" / "s001.npy").unlink()
    with pytest.raises(WorkDirIncomplete, match=r"s001.*features/s001\.npy"):
        train(fake.root, BASE, ckpt_dir=tmp_path / "ckpt", device="cpu")


def test_loaded_segments_are_trimmed_to_one_length_at_100_fps(workdir: FakeWorkDir) -> None:
    from rvc_core.layout import WorkDir
    from rvc_core.train.data import load_dataset, read_segment_records

    records = read_segment_records(WorkDir(workdir.root))
    data = load_dataset(
        workdir.root, records, version="v2", sample_rate=32000, f0=True, min_frames=40, device="cpu"
    )
    assert data.ids == workdir.segment_ids
    for i, frames in enumerate(data.frames):
        assert frames == 78  # 0.8 s: 39 feature frames at 50 fps, repeated x2, is the shortest
        assert data.phone[i].shape == (frames, 768)
        assert data.pitch is not None and data.pitch[i].shape == (frames,)
        assert data.spec[i].shape == (513, frames) and data.mel[i].shape == (80, frames)
        assert data.wave[i].shape == (frames * 320,)


def test_batches_are_zero_padded_to_the_longest_item(workdir: FakeWorkDir) -> None:
    from rvc_core.layout import WorkDir
    from rvc_core.train.data import load_dataset, read_segment_records

    records = read_segment_records(WorkDir(workdir.root))
    data = load_dataset(
        workdir.root, records, version="v2", sample_rate=32000, f0=True, min_frames=40, device="cpu"
    )
    short = dataclasses.replace(data, frames=(50, *data.frames[1:]))
    short.phone = [data.phone[0][:50], *data.phone[1:]]
    batch = short.collate([0, 1])
    assert batch.lengths.tolist() == [50, 78]
    assert batch.phone.shape == (2, 78, 768)
    assert torch.equal(batch.phone[0, :50], data.phone[0][:50])
    assert not batch.phone[0, 50:].any()


# --- pure pieces ----------------------------------------------------------------------------------
def test_validation_split_holds_out_at_least_one_disjoint_segment() -> None:
    ids = [f"seg{i:02d}" for i in range(30)]
    split = split_validation(ids, 0.05, seed=1)
    assert len(split.validation_ids) >= 1
    assert not set(split.validation_ids) & set(split.train_ids)
    assert sorted(split.train_ids + split.validation_ids) == ids
    assert split_validation(list(reversed(ids)), 0.05, seed=1) == split  # the listing order does not matter


def test_validation_split_of_two_segments_keeps_one_for_training() -> None:
    split = split_validation(["a", "b"], 0.5, seed=3)
    assert (len(split.train_ids), len(split.validation_ids)) == (1, 1)


def test_epoch_plan_uses_every_item_once_and_changes_with_the_epoch() -> None:
    frames = [100 + 37 * i % 300 for i in range(23)]
    plan = epoch_plan(frames, 4, seed=1, epoch=1)
    assert sorted(i for b in plan for i in b) == list(range(23))
    assert sum(len(b) < 4 for b in plan) == 1
    assert epoch_plan(frames, 4, seed=1, epoch=1) == plan
    assert epoch_plan(frames, 4, seed=1, epoch=2) != plan


def test_split_batches_keeps_the_item_order() -> None:
    assert split_batches([[5, 3, 9], [1]], 2) == [[5, 3], [9], [1]]


def test_training_hash_allows_more_epochs_but_not_another_seed() -> None:
    assert dataclasses.replace(BASE, epochs=50).training_hash() == BASE.training_hash()
    assert dataclasses.replace(BASE, log_every_steps=7).training_hash() == BASE.training_hash()
    assert dataclasses.replace(BASE, seed=8).training_hash() != BASE.training_hash()


def test_pretrained_location_does_not_change_the_hash_but_the_file_does() -> None:
    here = dataclasses.replace(BASE, pretrained_g=Path("/a/f0G40k.pth"))
    assert (
        dataclasses.replace(BASE, pretrained_g=Path("/b/f0G40k.pth")).training_hash() == here.training_hash()
    )
    assert dataclasses.replace(BASE, pretrained_g=Path("/a/G.pth")).training_hash() != here.training_hash()


def test_batch_size_on_cpu_is_four() -> None:
    assert choose_batch_size("cpu", "v2", 40000, "full") == 4


def test_batch_size_grows_with_free_memory_and_is_capped() -> None:
    gib = 2**30
    small, large = (batch_size_for_memory(n * gib, "v2", 40000, "full") for n in (8, 24))
    assert 1 <= small < large
    assert batch_size_for_memory(1 * gib, "v2", 40000, "full") == 1
    assert batch_size_for_memory(140 * gib, "v2", 40000, "full") == MAX_BATCH_SIZE


def test_importing_the_trainer_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, rvc_core.train, rvc_core.train.loop; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- on a GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_trains_on_cuda_with_mixed_precision(workdir: FakeWorkDir, tmp_path: Path) -> None:
    config = dataclasses.replace(BASE, deterministic=False)
    result = train(workdir.root, config, ckpt_dir=tmp_path, device="cuda")
    assert result.status == "finished"
    assert result.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert result.skipped_steps == 0
    assert all(torch.isfinite(torch.tensor(list(h.losses.values()))).all() for h in result.history)
