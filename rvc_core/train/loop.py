"""`train`: the epoch loop around `step.train_step`, with pausing, resuming, validation and recovery.

Host syncs, all documented: one per logging interval (losses, grad norms and the skip counters in
one read), one small read at every `max_nonfinite_steps`-th step that is not a logging step (the
lazy non-finite check: a skipped step costs no sync, and a run of skips is caught within one interval),
and one per epoch (the epoch's mean losses with the validation loss). Nothing is read per step.

Resume: the checkpoint holds the batches left in the current epoch, so a run paused mid-epoch
continues with exactly the batches, random windows and optimiser states an uninterrupted run would
have had. After a finished epoch E a resume starts at E + 1 (Applio's semantics).

Out of memory: a step that raises `torch.OutOfMemoryError` is abandoned, the batch size halves, the
batches left in the epoch (the failed one included) are re-cut, and training continues. If the
discriminator had already stepped on the failed batch, that update is kept (it is one more D step).
The epoch-end validation does the same with its own batch size: out of memory halves it and the
validation starts again (it is deterministic, and it changes no weight); both fail clearly only at
batch size 1. Each reduction is recorded in `TrainResult.batch_size_reductions` with its phase.

Skipped steps: the stepper counts them on the device by network and kind; the counts are read with
the epoch's other values at its end (`EpochSummary.skips`) and at the end of the run (`TrainResult.skips`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rvc_core.errors import ConfigError, NonFiniteLoss, TooLittleAudio, TrainingOutOfMemory
from rvc_core.layout import WorkDir
from rvc_core.progress import ProgressCallback
from rvc_core.spec import SPECTROGRAMS
from rvc_core.train import checkpoint as ckpt
from rvc_core.train import step as step_module
from rvc_core.train.config import ADAMW_BETAS, ADAMW_EPS, LR_DECAY_PER_EPOCH, TrainConfig
from rvc_core.train.data import epoch_plan, load_dataset, read_segment_records, split_batches
from rvc_core.train.data import split_validation as make_split
from rvc_core.train.kernels import convolution_kernels
from rvc_core.train.results import BatchSizeReduction, EpochSummary, TrainResult

if TYPE_CHECKING:
    import torch

    from rvc_core.train.precision import GuardedStepper, Precision
    from rvc_core.train.progress import TrainingMonitor

log = logging.getLogger(__name__)

# The clock of deadlines and timings; a module attribute so tests can run the loop on a fake clock.
monotonic = time.monotonic
# Share of an epoch's time a checkpoint may take for it to be written at every epoch end.
CHEAP_CHECKPOINT_SHARE = 0.05
# Weight of the newest step time in the running estimate used against the deadline.
STEP_TIME_SMOOTHING = 0.2


@dataclass
class _RunState:
    """Everything about a run's progress that a checkpoint carries besides the torch objects."""

    epoch: int = 0  # completed epochs
    step: int = 0
    batch_size: int = 1
    remaining: list[list[int]] = field(default_factory=list)  # batches left in the current epoch
    batches_done: int = 0  # in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_validation_mel: float | None = None
    reductions: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: float = 0.0  # wall time spent in the current epoch so far
    # None: the training batch size (until validation ran out of memory).
    validation_batch_size: int | None = None
    skips_before_epoch: list[int] = field(default_factory=list)  # the stepper's skip counts then

    @property
    def in_epoch(self) -> bool:
        return bool(self.remaining) or self.batches_done > 0


def train(
    workdir: Path,
    config: TrainConfig,
    *,
    ckpt_dir: Path,
    device: str,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Trains (or resumes training) on a prepared work dir until `config.epochs` epochs are done,
    `deadline` (a `time.monotonic()` value) would be passed by the next step, or `should_stop()`
    says so. Always leaves a checkpoint in `ckpt_dir`; when finished also `ckpt_dir/generator.pt`."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    try:
        run = _Run(Path(workdir), config, Path(ckpt_dir), device, progress)
        with convolution_kernels(device, run.trainee.discriminator, run.precision.name):
            return run.run(deadline=deadline, should_stop=should_stop)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=True)


class _Run:
    def __init__(
        self,
        workdir: Path,
        config: TrainConfig,
        ckpt_dir: Path,
        device: str,
        progress: ProgressCallback | None,
    ) -> None:
        import torch

        from rvc_core.models import build_discriminator, build_generator
        from rvc_core.train.batch_size import choose_batch_size
        from rvc_core.train.compiled import LENGTH_MULTIPLE, compile_trainee, compile_wins
        from rvc_core.train.precision import GuardedStepper, choose_precision

        self.config = config
        self.ckpt_dir = ckpt_dir
        self.device = device
        self.progress = progress
        self.spec = SPECTROGRAMS[config.sample_rate]
        ckpt_dir.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(config.seed)
        generator = build_generator(config.version, config.sample_rate, f0=config.f0, preset=config.preset)
        discriminator = build_discriminator(config.version, preset=config.preset)
        generator.to(device).train()
        discriminator.to(device).train()

        self._load_data(workdir, segment_frames=generator.segment_frames)
        if self.speakers > generator.shape.spk_embed_dim:
            raise ConfigError(
                f"speaker id {self.speakers - 1} is out of range: the model has "
                f"{generator.shape.spk_embed_dim} speaker slots",
                stage="train",
            )

        g_params = [p for p in generator.parameters() if p.requires_grad]
        d_params = [p for p in discriminator.parameters() if p.requires_grad]
        self.trainee = step_module.Trainee(
            generator=generator,
            discriminator=discriminator,
            optim_g=adamw(g_params, config.learning_rate),
            optim_d=adamw(d_params, config.learning_rate),
            g_params=g_params,
            d_params=d_params,
        )
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.trainee.optim_g, gamma=LR_DECAY_PER_EPOCH)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.trainee.optim_d, gamma=LR_DECAY_PER_EPOCH)
        self.compiled = config.compile if config.compile is not None else compile_wins(device)
        if self.compiled:
            compile_trainee(self.trainee)
        self._length_multiple = LENGTH_MULTIPLE if self.compiled else 1
        self.precision: Precision = choose_precision(device, config.precision)
        self.stepper: GuardedStepper = GuardedStepper(self.precision, device)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.state = _RunState()
        self._zero_accumulators()

        saved = ckpt.load_checkpoint(ckpt_dir, device)
        if saved is not None:
            ckpt.check_resumable(saved, config, self.dataset_ids)
            self._restore(saved)
            log.info(
                "resuming from %s: %d epoch(s) and %d step(s) done",
                ckpt.checkpoint_path(ckpt_dir),
                self.state.epoch,
                self.state.step,
            )
        else:
            self._initialise_weights()
            self.state.batch_size = config.batch_size or choose_batch_size(
                device, config.version, config.sample_rate, config.preset
            )
        self._last_save_at = monotonic()
        self._last_save_seconds = 0.0
        self._step_seconds: float | None = None
        self._validation_seconds = 0.0
        self._epoch_durations: list[float] = []

    # --- setup --------------------------------------------------------------------------------------
    def _load_data(self, workdir: Path, *, segment_frames: int) -> None:
        """The training and validation sets, resident on the device, and the dataset's identity."""
        config = self.config
        records = read_segment_records(WorkDir(workdir))
        self.dataset_ids = [r.id for r in records]
        split = make_split(self.dataset_ids, config.validation_fraction, config.seed)
        everything = load_dataset(
            workdir,
            records,
            version=config.version,
            sample_rate=config.sample_rate,
            f0=config.f0,
            min_frames=segment_frames,
            device=self.device,
        )
        position = {seg_id: i for i, seg_id in enumerate(everything.ids)}
        self.train_set = everything.subset([position[s] for s in split.train_ids if s in position])
        self.validation_set = everything.subset([position[s] for s in split.validation_ids if s in position])
        if len(self.train_set) == 0 or len(self.validation_set) == 0:
            raise TooLittleAudio(
                "after leaving out segments shorter than the training window, no training or no "
                "validation segment is left",
                stage="train",
            )
        self.speakers = max(everything.speaker_ids) + 1

    def _initialise_weights(self) -> None:
        from rvc_core.models import load_pretrained

        for label, path, model in (
            ("generator", self.config.pretrained_g, self.trainee.generator),
            ("discriminator", self.config.pretrained_d, self.trainee.discriminator),
        ):
            if path is not None:
                load_pretrained(model, path)
                log.info("%s initialised from %s", label, path)
            else:
                log.warning(
                    "NO PRETRAINED %s: training from random weights. Expect far worse quality and many more "
                    "epochs than with RVC's pretrained files (pass pretrained_g / pretrained_d).",
                    label.upper(),
                )

    def _zero_accumulators(self) -> None:
        import torch

        n = len(step_module.LOSS_NAMES)
        self._epoch_sums = torch.zeros(n, device=self.device)
        self._epoch_count = torch.zeros((), device=self.device)
        self._interval_sums = torch.zeros(n, device=self.device)
        self._interval_count = torch.zeros((), device=self.device)
        self._grad_norms: torch.Tensor | None = None

    # --- the loop -----------------------------------------------------------------------------------
    def run(self, *, deadline: float | None, should_stop: Callable[[], bool] | None) -> TrainResult:
        from rvc_core.train.progress import TrainingMonitor

        state, config = self.state, self.config
        monitor = TrainingMonitor(
            callback=self.progress,
            tensorboard_dir=config.tensorboard_dir,
            show_bar=config.progress_bar,
            total_steps=state.step
            + self._batches_per_epoch() * (config.epochs - state.epoch)
            - state.batches_done,
            initial_step=state.step,
        )
        try:
            while state.epoch < config.epochs:
                if not state.in_epoch:
                    state.remaining = epoch_plan(
                        self.train_set.frames, state.batch_size, config.seed, state.epoch + 1
                    )
                epoch_started = monotonic()
                while state.remaining:
                    reason = self._pause_reason(deadline, should_stop)
                    if reason is not None:
                        state.epoch_seconds += monotonic() - epoch_started
                        self._save()
                        return self._result("paused", reason)
                    self._one_step(monitor)
                    self._maybe_periodic_save()
                state.epoch_seconds += monotonic() - epoch_started
                self._finish_epoch(monitor)
            self._save()
            return self._result("finished", "finished")
        finally:
            monitor.close()

    def _pause_reason(self, deadline: float | None, should_stop: Callable[[], bool] | None) -> str | None:
        if should_stop is not None and should_stop():
            return "should_stop"
        if deadline is None:
            return None
        needed = (self._step_seconds or 0.0) + self._last_save_seconds
        if len(self.state.remaining) == 1:
            needed += self._validation_seconds
        return "deadline" if monotonic() + needed > deadline else None

    def _attempt_step(self, indices: list[int], want_norms: bool) -> step_module.StepResult | None:
        """The step, or None when it ran out of memory. Returning (rather than recovering inside the
        `except`) lets the failed step's tensors be freed before the retry."""
        import torch

        try:
            batch = self.train_set.collate(indices, length_multiple=self._length_multiple)
            return step_module.train_step(
                self.trainee,
                batch,
                precision=self.precision,
                stepper=self.stepper,
                spec=self.spec,
                want_grad_norms=want_norms,
            )
        except torch.OutOfMemoryError:
            return None

    def _one_step(self, monitor: TrainingMonitor) -> None:
        state, config = self.state, self.config
        started = monotonic()
        result = self._attempt_step(state.remaining[0], (state.step + 1) % config.log_every_steps == 0)
        if result is None:
            self._recover_from_oom()
            return
        state.remaining.pop(0)
        state.batches_done += 1
        state.step += 1
        # A skipped step adds nothing (its losses may be NaN, and NaN * 0 is still NaN).
        applied = result.finite.float()
        contribution = result.losses.where(result.finite, 0.0)
        self._epoch_sums += contribution
        self._epoch_count += applied
        self._interval_sums += contribution
        self._interval_count += applied
        if result.grad_norms is not None:
            self._grad_norms = result.grad_norms
        monitor.step_done()
        if state.step % config.log_every_steps == 0:
            self._log_interval(monitor)
        elif state.step % config.max_nonfinite_steps == 0:
            self._check_nonfinite(*self._read_skip_counters())
        elapsed = monotonic() - started
        self._step_seconds = (
            elapsed
            if self._step_seconds is None
            else (1 - STEP_TIME_SMOOTHING) * self._step_seconds + STEP_TIME_SMOOTHING * elapsed
        )

    def _recover_from_oom(self) -> None:
        import torch

        state = self.state
        self.trainee.optim_g.zero_grad(set_to_none=True)
        self.trainee.optim_d.zero_grad(set_to_none=True)
        self.stepper.abandon_step()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if state.batch_size == 1 and len(state.remaining[0]) == 1:
            raise TrainingOutOfMemory(
                "out of accelerator memory even at batch size 1: use a GPU with more memory, the tiny "
                "preset, or shorter segments",
                stage="train",
            )
        new = max(1, state.batch_size // 2)
        log.warning("out of memory at batch size %d: continuing with %d", state.batch_size, new)
        state.reductions.append(
            asdict(BatchSizeReduction(time.time(), state.epoch + 1, state.step, state.batch_size, new))
        )
        state.batch_size = new
        state.remaining = split_batches(state.remaining, new)

    def _validation_loss(self) -> torch.Tensor:
        """The validation loss, its batch size halved and the validation rerun on out of memory."""
        state = self.state
        while True:
            batch_size = min(state.batch_size, state.validation_batch_size or state.batch_size)
            loss = self._attempt_validation(batch_size)
            if loss is not None:
                return loss
            self._recover_from_validation_oom(batch_size)

    def _attempt_validation(self, batch_size: int) -> torch.Tensor | None:
        import torch

        from rvc_core.train.validation import validation_mel_loss

        try:
            return validation_mel_loss(
                self.trainee.generator,
                self.validation_set,
                spec=self.spec,
                seed=self.config.seed,
                batch_size=batch_size,
            )
        except torch.OutOfMemoryError:
            return None

    def _recover_from_validation_oom(self, batch_size: int) -> None:
        import torch

        state = self.state
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if batch_size == 1:
            raise TrainingOutOfMemory(
                "out of accelerator memory in validation even at batch size 1: use a GPU with more "
                "memory, the tiny preset, or shorter segments",
                stage="train",
            )
        new = max(1, batch_size // 2)
        log.warning("out of memory in validation at batch size %d: continuing with %d", batch_size, new)
        state.reductions.append(
            asdict(
                BatchSizeReduction(
                    time.time(), state.epoch + 1, state.step, batch_size, new, phase="validation"
                )
            )
        )
        state.validation_batch_size = new

    def _read_skip_counters(self) -> tuple[int, int]:
        import torch

        values = torch.stack([self.stepper.skipped_steps, self.stepper.worst_consecutive_skips]).tolist()
        self.stepper.reset_worst_run()
        return int(values[0]), int(values[1])

    def _check_nonfinite(self, skipped: int, worst_run: int) -> None:
        if worst_run >= self.config.max_nonfinite_steps:
            raise NonFiniteLoss(
                f"{worst_run} consecutive training steps had a non-finite loss or non-finite gradients "
                f"(precision {self.precision.name}; limit {self.config.max_nonfinite_steps}; {skipped} "
                f"skipped in total) at epoch "
                f"{self.state.epoch + 1}, step {self.state.step}. The weights were not updated by those "
                "steps. Try a lower learning rate or check the dataset for broken audio.",
                stage="train",
            )

    def _log_interval(self, monitor: TrainingMonitor) -> None:
        import torch

        parts = [
            self._interval_sums,
            self._interval_count.view(1),
            self.stepper.skipped_steps.float().view(1),
            self.stepper.worst_consecutive_skips.float().view(1),
        ]
        if self._grad_norms is not None:
            parts.append(self._grad_norms.float())
        values = torch.cat(parts).tolist()  # the one sync of the interval
        self.stepper.reset_worst_run()
        n = len(step_module.LOSS_NAMES)
        count = values[n]
        self._check_nonfinite(int(values[n + 1]), int(values[n + 2]))
        metrics = {name: values[i] / count for i, name in enumerate(step_module.LOSS_NAMES)} if count else {}
        if self._grad_norms is not None:
            metrics["grad_norm_g"], metrics["grad_norm_d"] = values[n + 3], values[n + 4]
        self._interval_sums.zero_()
        self._interval_count.zero_()
        self._grad_norms = None
        self._report(monitor, metrics)

    def _report(self, monitor: TrainingMonitor, metrics: dict[str, float], message: str = "") -> None:
        state, config = self.state, self.config
        per_epoch = self._seconds_per_epoch()
        done = state.epoch + (state.batches_done / max(1, state.batches_done + len(state.remaining)))
        eta = None if per_epoch is None else max(0.0, (config.epochs - done) * per_epoch)
        monitor.report(
            epoch=state.epoch + 1 if state.in_epoch else state.epoch,
            epochs=config.epochs,
            step=state.step,
            metrics=metrics,
            learning_rate=self.sched_g.get_last_lr()[0],
            eta_seconds=eta,
            seconds_per_epoch=per_epoch,
            message=message,
        )

    def _seconds_per_epoch(self) -> float | None:
        if self._epoch_durations:
            return sum(self._epoch_durations) / len(self._epoch_durations)
        if self._step_seconds is None:
            return None
        return self._step_seconds * self._batches_per_epoch()

    def _batches_per_epoch(self) -> int:
        """At the current batch size (it shrinks after an out-of-memory step)."""
        return math.ceil(len(self.train_set) / self.state.batch_size)

    def _finish_epoch(self, monitor: TrainingMonitor) -> None:
        import torch

        state, config = self.state, self.config
        started = monotonic()
        learning_rate = self.sched_g.get_last_lr()[0]
        validation = self._validation_loss()
        values = torch.cat(
            [
                self._epoch_sums,
                self._epoch_count.view(1),
                validation.view(1),
                self.stepper.skip_counts.float(),
            ]
        ).tolist()  # the one sync of the epoch
        self._validation_seconds = monotonic() - started
        self.sched_g.step()
        self.sched_d.step()
        n = len(step_module.LOSS_NAMES)
        count = values[n]
        skip_counts = [int(v) for v in values[n + 2 :]]
        before = state.skips_before_epoch or [0] * len(skip_counts)
        epoch_skips = self.stepper.skip_summary([a - b for a, b in zip(skip_counts, before, strict=True)])
        state.skips_before_epoch = skip_counts
        state.epoch += 1
        state.epoch_seconds += self._validation_seconds
        summary = EpochSummary(
            epoch=state.epoch,
            losses={
                name: values[i] / count if count else math.nan
                for i, name in enumerate(step_module.LOSS_NAMES)
            },
            validation_mel=values[n + 1],
            learning_rate=learning_rate,
            steps=int(count),
            seconds=state.epoch_seconds,
            skips=epoch_skips,
        )
        state.history.append(asdict(summary))
        self._epoch_durations.append(state.epoch_seconds)
        if state.best_validation_mel is None or summary.validation_mel < state.best_validation_mel:
            state.best_epoch, state.best_validation_mel = state.epoch, summary.validation_mel
            self.best_weights = ckpt.cpu_copy(self.trainee.generator.state_dict())
        if config.save_every is not None and state.epoch % config.save_every == 0:
            ckpt.save_generator_weights(
                self.ckpt_dir / f"generator_e{state.epoch}.pt", self.trainee.generator.state_dict()
            )
        state.remaining, state.batches_done, state.epoch_seconds = [], 0, 0.0
        self._epoch_sums.zero_()
        self._epoch_count.zero_()
        self._report(
            monitor,
            {**summary.losses, "validation_mel": summary.validation_mel},
            message=f"epoch {state.epoch} done",
        )
        monitor.set_total_steps(state.step + self._batches_per_epoch() * (config.epochs - state.epoch))
        epoch_took = self._epoch_durations[-1]
        due = monotonic() - self._last_save_at >= config.checkpoint_every_seconds
        if state.epoch < config.epochs and (
            due or self._last_save_seconds <= CHEAP_CHECKPOINT_SHARE * epoch_took
        ):
            self._save()

    # --- checkpoints ------------------------------------------------------------------------------
    def _maybe_periodic_save(self) -> None:
        if monotonic() - self._last_save_at >= self.config.checkpoint_every_seconds:
            self._save()

    def _save(self) -> None:
        t = self.trainee
        state = {
            "training_hash": self.config.training_hash(),
            "hashed_fields": self.config.hashed_fields(),
            "dataset_ids": self.dataset_ids,
            "generator": t.generator.state_dict(),
            "discriminator": t.discriminator.state_dict(),
            "optim_g": t.optim_g.state_dict(),
            "optim_d": t.optim_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "stepper": self.stepper.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "run": asdict(self.state),
            "accumulators": {"epoch_sums": self._epoch_sums, "epoch_count": self._epoch_count},
            "best_generator": self.best_weights,
        }
        self._last_save_seconds = ckpt.save_checkpoint(self.ckpt_dir, state)
        self._last_save_at = monotonic()

    def _restore(self, saved: dict[str, Any]) -> None:
        t = self.trainee
        t.generator.load_state_dict(saved["generator"])
        t.discriminator.load_state_dict(saved["discriminator"])
        t.optim_g.load_state_dict(saved["optim_g"])
        t.optim_d.load_state_dict(saved["optim_d"])
        self.sched_g.load_state_dict(saved["sched_g"])
        self.sched_d.load_state_dict(saved["sched_d"])
        self.stepper.load_state_dict(saved["stepper"])
        self.state = _RunState(**saved["run"])
        self._epoch_sums = saved["accumulators"]["epoch_sums"].to(self.device)
        self._epoch_count = saved["accumulators"]["epoch_count"].to(self.device)
        best = saved["best_generator"]
        self.best_weights = None if best is None else ckpt.cpu_copy(best)
        ckpt.restore_rng_state(saved["rng"])

    def _result(self, status: Literal["paused", "finished"], reason: str) -> TrainResult:
        state = self.state
        weights_path = None
        if status == "finished":
            use_best = self.config.export == "best" and self.best_weights is not None
            weights = self.best_weights if use_best else self.trainee.generator.state_dict()
            weights_path = ckpt.save_generator_weights(self.ckpt_dir / ckpt.GENERATOR_NAME, weights)
        skipped, _ = self._read_skip_counters()
        skips = self.stepper.skip_summary(self.stepper.skip_counts.tolist())
        return TrainResult(
            status=status,
            stop_reason=reason,
            epoch=state.epoch,
            epochs=self.config.epochs,
            step=state.step,
            best_epoch=state.best_epoch,
            best_validation_mel=state.best_validation_mel,
            history=tuple(EpochSummary(**h) for h in state.history),
            batch_size=state.batch_size,
            batch_size_reductions=tuple(BatchSizeReduction(**r) for r in state.reductions),
            skipped_steps=skipped,
            precision=self.precision.name,
            checkpoint=ckpt.checkpoint_path(self.ckpt_dir),
            generator_weights=weights_path,
            train_segments=len(self.train_set),
            validation_segments=len(self.validation_set),
            speakers=self.speakers,
            train_seconds=self.train_set.seconds,
            skips=skips,
        )


def adamw(params: list[torch.Tensor], learning_rate: float) -> torch.optim.Optimizer:
    """RVC's AdamW (weight decay left at torch's default 0.01, as RVC does). Fused kernels: fewer
    launches, and they can skip a step on the device (see `precision.py`)."""
    import torch

    return torch.optim.AdamW(params, lr=learning_rate, betas=ADAMW_BETAS, eps=ADAMW_EPS, fused=True)
