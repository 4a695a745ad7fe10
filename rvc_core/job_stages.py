"""The stages of `run_job` after preparation: train, then index, export, preview, report and zip.

Every output is written atomically. The finishing stages run as units within the call's `Budget`:
each writes its outputs into `WORKDIR/finish/` and a marker `stages/<stage>.json`, so a call paused
between them (or inside the index's k-means) continues with the next one; the last copies the
outputs into `outdir`, which the service empties between slices. A finished training run leaves
`stages/train.json` (its result), so finishing slices do not rebuild the trainer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_core.assets import AssetStore
from rvc_core.atomic import atomic_path, write_json
from rvc_core.continue_from import write_checkpoint_pair
from rvc_core.export import ExportInfo, build_export, save_export
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.layout import FINISH_STAGES, WorkDir
from rvc_core.prepare import Budget, Paused, PreparedDataset, monotonic, run_prepare
from rvc_core.progress import ProgressCallback, ProgressEvent
from rvc_core.spec import sample_rate_label

if TYPE_CHECKING:
    from rvc_core.train import TrainResult

log = logging.getLogger(__name__)

FINISH_DIR = "finish"  # the finishing stages' outputs, kept between slices


def prepare_stage(
    dataset_zip: Path,
    workdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    assets: AssetStore,
    emit: ProgressCallback,
    budget: Budget | None = None,
) -> PreparedDataset:
    return run_prepare(
        dataset_zip,
        workdir,
        spec.prepare_config(),
        assets=assets,
        device=env.device,
        workers=env.workers,
        progress=emit,
        budget=budget,
        max_audio_seconds=env.max_audio_seconds,
    )


def pretrained_paths(
    spec: JobSpec, option: str | None, environ: Mapping[str, str]
) -> tuple[Path | None, Path | None]:
    """RVC's file names in a pretrained folder (`pretrained_v2/f0G40k.pth` …); None for `none`.

    Missing files are an error naming them: silently training from scratch would waste GPU hours."""
    from rvc_core.errors import AssetMissing

    value = option if option is not None else environ.get("RVC_PRETRAINED")
    if not value or value == "none":
        return None, None
    folder = Path(value) / ("pretrained_v2" if spec.version == "v2" else "pretrained")
    rate = sample_rate_label(spec.sample_rate)
    g, d = folder / f"f0G{rate}.pth", folder / f"f0D{rate}.pth"
    missing = [str(p) for p in (g, d) if not p.exists()]
    if missing:
        raise AssetMissing(
            f"pretrained weights not found: {', '.join(missing)}; fetch them with "
            f"`python -m rvc_core assets download --dest {value}` or pass --pretrained none",
            stage="train",
        )
    return g, d


def train_config(spec: JobSpec, env: JobEnvironment, environ: Mapping[str, str]) -> Any:
    from rvc_core.train import TrainConfig

    if env.base_g and env.base_d:  # continue training from another model's checkpoint pair
        g, d = Path(env.base_g), Path(env.base_d)
    else:
        g, d = pretrained_paths(spec, env.pretrained, environ)
    return TrainConfig(
        version=spec.version,
        sample_rate=spec.sample_rate,
        f0=True,
        preset=spec.preset,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
        save_every=spec.save_every,
        export=spec.export,
        pretrained_g=g,
        pretrained_d=d,
        tensorboard_dir=Path(env.tensorboard) if env.tensorboard else None,
        compile=env.compile,
        precision=env.precision,
    )


def train_stage(
    workdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    budget: Budget,
    emit: ProgressCallback,
    environ: Mapping[str, str],
) -> TrainResult:
    """Trains until finished or the budget runs out. Training is entered only when its start-up and
    a step fit the time left (or nothing was done yet in this call: then at least one step is
    taken, however small the budget, so every call moves)."""
    from rvc_core.train import train

    wd = WorkDir(Path(workdir))
    marker = wd.stage_marker("train")
    done = _load_train_result(marker, Path(workdir), spec)
    if done is not None:
        return done
    config = train_config(spec, env, environ)
    start_estimate, step_estimate = budget.estimate("train_start"), budget.estimate("train_step")
    budget.check("train", start_estimate + step_estimate)
    # Too little time for training's own estimate (a step may not even fit after the start-up) in a
    # call that did nothing yet: take one step, then stop on our own step-time estimate.
    grant = (
        budget.bounded and not budget.progressed and budget.remaining() < start_estimate + 2 * step_estimate
    )
    progressed = budget.progressed
    started = monotonic()
    checks: list[float] = []

    def should_stop() -> bool:  # called before every step
        now = monotonic()
        checks.append(now)
        if budget.should_stop is not None and budget.should_stop():
            return True
        if not budget.bounded or (len(checks) == 1 and not progressed):
            return False  # a call that did nothing yet takes at least one step
        # The last step's time (periodic saves and validation included), else the measured rate:
        # training's own estimate starts afresh in every call, and its first step would be blind.
        # The larger of the two: a step's time varies (a shared CPU, an epoch's validation).
        step = max(now - checks[-2], step_estimate) if len(checks) > 1 else step_estimate
        return step > budget.remaining()

    with budget.timed("train"):
        result = train(
            workdir,
            config,
            ckpt_dir=wd.checkpoint_dir,
            device=env.device,
            deadline=None if grant else budget.deadline,
            should_stop=should_stop,
            progress=emit,
        )
    ended = monotonic()
    if checks:
        budget.record("train_start", checks[0] - started, kept=False)
        steps = len(checks) - (1 if result.status == "paused" else 0)
        if steps > 0:
            budget.record("train_step", ended - checks[0], steps)
    if result.status == "finished":
        # Outputs of an earlier run's model (a rerun asking for more epochs) are stale now.
        for stage in FINISH_STAGES[1:]:
            wd.stage_marker(stage).unlink(missing_ok=True)
        write_json(marker, _train_result_json(result, Path(workdir), spec))
    return result


def _train_result_json(result: TrainResult, workdir: Path, spec: JobSpec) -> dict[str, Any]:
    data = asdict(result)
    for key in ("checkpoint", "generator_weights"):
        if data[key] is not None:
            data[key] = os.path.relpath(data[key], workdir)
    return {"epochs_asked": spec.epochs, "result": data}


def _load_train_result(marker: Path, workdir: Path, spec: JobSpec) -> TrainResult | None:
    """The finished run recorded in `stages/train.json`, or None (absent, or other epochs asked)."""
    from rvc_core.train import TrainResult
    from rvc_core.train.results import BatchSizeReduction, EpochSummary

    if not marker.exists():
        return None
    saved = json.loads(marker.read_text())
    if saved.get("epochs_asked") != spec.epochs:
        return None
    d = dict(saved["result"])
    d["history"] = tuple(EpochSummary(**h) for h in d["history"])
    d["batch_size_reductions"] = tuple(BatchSizeReduction(**r) for r in d["batch_size_reductions"])
    d["checkpoint"] = workdir / d["checkpoint"]
    if d["generator_weights"] is not None:
        d["generator_weights"] = workdir / d["generator_weights"]
    return TrainResult(**d)


def _unit(
    stage: str, wd: WorkDir, budget: Budget, estimate: float, emit: ProgressCallback, message: str
) -> Callable[[Callable[[], dict[str, Any]]], dict[str, Any]]:
    """Runs a finishing stage once: its marker (with its summary and seconds) says it is done."""

    def run(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        marker = wd.stage_marker(stage)
        if marker.exists():
            return json.loads(marker.read_text())
        budget.check(stage, estimate)
        emit(ProgressEvent(stage=stage, message=message))
        started = monotonic()
        with budget.timed(stage):
            summary = body()
        seconds = monotonic() - started
        summary["seconds"] = round(seconds + float(summary.get("seconds", 0.0)), 3)
        write_json(marker, summary)
        budget.record(stage, seconds)
        return summary

    return run


def finish_job(
    prepared: PreparedDataset,
    trained: TrainResult,
    workdir: Path,
    outdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    assets: AssetStore,
    emit: ProgressCallback,
    budget: Budget | None = None,
) -> JobProgress:
    """Index, export, preview, report, zip: the outputs users receive, built in `WORKDIR/finish/`
    unit by unit within `budget`, then copied to `outdir`."""
    from rvc_core.index import build_index, index_file_name, stack_features

    budget = budget or Budget()
    wd = prepared.workdir
    out = wd.root / FINISH_DIR
    out.mkdir(parents=True, exist_ok=True)
    segment_ids = [s.id for s in prepared.segments]
    dataset_seconds = prepared.report.totals.usable_seconds

    def index_body() -> dict[str, Any]:
        for stale in out.glob(index_file_name(spec.model_name, spec.version, "*")):
            stale.unlink()  # a rerun may choose another n; keep exactly one index

        def load_features() -> np.ndarray:  # not called by a build resumed after its k-means
            sizes = sum((wd.features_dir / f"{sid}.npy").stat().st_size for sid in segment_ids) / 2**20
            budget.check("index", budget.estimate("stack_features", sizes))
            started = monotonic()
            features = stack_features([wd.features_dir / f"{sid}.npy" for sid in segment_ids])
            budget.record("stack_features", monotonic() - started, max(sizes, 1e-3), kept=False)
            return features

        result = build_index(
            load_features,
            out,
            spec.model_name,
            spec.version,
            seed=spec.seed,
            use_gpu=env.device.startswith("cuda"),
            state_dir=out / "index_state",
            budget=budget,
        )
        shutil.rmtree(out / "index_state", ignore_errors=True)
        return {
            "file": result.path.name,
            "n_lists": result.n_lists,
            "vectors": result.vectors,
            "dim": result.dim,
            "seconds": _state_seconds(wd, "index"),  # spent by earlier calls
        }

    try:
        index = _unit("index", wd, budget, 0.0, emit, f"{len(segment_ids)} segment(s)")(index_body)
    except Paused:
        _add_state_seconds(wd, "index", budget.timings.get("index", 0.0))
        raise
    index_path = out / index["file"]
    exported_epoch = trained.best_epoch if spec.export == "best" and trained.best_epoch else trained.epoch

    # Export and preview use the same trained generator: load it once (when the first of them runs).
    trained_generator = functools.cache(lambda: load_trained_generator(spec, trained))

    def export_body() -> dict[str, Any]:
        pth = export_model(
            trained_generator(),
            out / f"{spec.model_name}.pth",
            spec,
            exported_epoch,
            trained.step,
            dataset_seconds,
            trained.speakers,
        )
        extra = export_periodic(spec, trained, out, dataset_seconds)
        return {"pth": pth.name, "extra": {str(k): v.name for k, v in extra.items()}}

    export = _unit("export", wd, budget, budget.estimate("export"), emit, f"{spec.model_name}.pth")(
        export_body
    )
    preview_id = pick_preview_segment(segment_ids, spec)

    def preview_body() -> dict[str, Any]:
        path = write_preview(
            trained_generator(), wd, preview_id, index_path, out / "preview.wav", spec, env.device
        )
        return {"file": path.name, "segment": preview_id}

    preview = _unit(
        "preview", wd, budget, budget.estimate("preview"), emit, "converting one held-out segment"
    )(preview_body)
    metrics = training_metrics(trained)

    def report_body() -> dict[str, Any]:
        report = {
            "model_name": spec.model_name,
            "spec": _plain(spec.__dict__),
            "dataset": prepared.report.to_json(),
            "training": metrics,
            "index": {k: index[k] for k in ("file", "n_lists", "vectors", "dim")},
            "exported_epoch": exported_epoch,
            "preview_segment": preview_id,
            "timings_seconds": {
                "index": index["seconds"],
                "export": export["seconds"],
                "preview": preview["seconds"],
                "training": round(sum(e.seconds for e in trained.history), 3),
            },
        }
        write_json(out / "report.json", report)
        write_report_plot(out / "report.png", trained, prepared, wd, spec)
        return {"file": "report.json", "plot": "report.png"}

    _unit("report", wd, budget, budget.estimate("report"), emit, "report.json, report.png")(report_body)
    pth = out / export["pth"]
    zip_mb = (pth.stat().st_size + index_path.stat().st_size) / 2**20

    def zip_body() -> dict[str, Any]:
        return {"file": write_model_zip(out / f"{spec.model_name}.zip", [pth, index_path]).name}

    _unit("zip", wd, budget, budget.estimate("zip", zip_mb), emit, f"{spec.model_name}.zip")(zip_body)

    def checkpoints_body() -> dict[str, Any]:  # G_<n>.pth / D_<n>.pth, to continue training from
        pair = write_checkpoint_pair(trained.checkpoint, out)
        return {key: path.name for key, path in pair.artifacts().items()}

    # A unit like the others: budgeted (it reads the whole training checkpoint, 1.4 GB for the full
    # preset), and skipped by a finishing call that resumes after it.
    pair = _unit("checkpoints", wd, budget, budget.estimate("checkpoints"), emit, "G and D checkpoints")(
        checkpoints_body
    )
    with budget.timed("deliver"):
        outdir.mkdir(parents=True, exist_ok=True)
        for stale in outdir.glob(index_file_name(spec.model_name, spec.version, "*")):
            if stale.name != index_path.name:
                stale.unlink()
        names = {
            "pth": export["pth"],
            "index": index_path.name,
            "preview": preview["file"],
            "report": "report.json",
            "report_png": "report.png",
            "zip": f"{spec.model_name}.zip",
            **{f"pth_e{epoch}": name for epoch, name in export["extra"].items()},
            "G": pair["G"],
            "D": pair["D"],
        }
        artifacts = {key: _deliver(out / name, outdir / name) for key, name in names.items()}
    return JobProgress(
        status="finished",
        stage="done",
        epoch=trained.epoch,
        epochs=trained.epochs,
        step=trained.step,
        losses=dict(trained.history[-1].losses) if trained.history else {},
        artifacts=artifacts,
        metrics=metrics,
        dataset_report=prepared.report.to_json(),
    )


def _state_seconds(wd: WorkDir, stage: str) -> float:
    path = wd.root / FINISH_DIR / f"{stage}.seconds.json"
    return float(json.loads(path.read_text())["seconds"]) if path.exists() else 0.0


def _add_state_seconds(wd: WorkDir, stage: str, seconds: float) -> None:
    """Seconds a paused stage already spent, for the report (the marker adds the last call's)."""
    write_json(
        wd.root / FINISH_DIR / f"{stage}.seconds.json", {"seconds": _state_seconds(wd, stage) + seconds}
    )


def _deliver(src: Path, dst: Path) -> Path:
    """`src` at `dst`: a hard link where the file system allows, else a copy (both atomic)."""
    if dst.exists() and dst.samefile(src):
        return dst
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return dst


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def load_trained_generator(spec: JobSpec, trained: TrainResult) -> Any:
    assert trained.generator_weights is not None
    return load_generator(spec, trained.generator_weights)


def load_generator(spec: JobSpec, weights: Path) -> Any:
    """The job's generator architecture with the state dict saved at `weights`, in eval mode."""
    import torch

    from rvc_core.models import build_generator

    generator = build_generator(spec.version, spec.sample_rate, f0=True, preset=spec.preset)
    generator.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return generator.eval()


def export_model(
    generator: Any, path: Path, spec: JobSpec, epoch: int, step: int, dataset_seconds: float, speakers: int
) -> Path:
    from rvc_core.models import export_generator_weights

    info = ExportInfo(
        model_name=spec.model_name,
        version=spec.version,
        f0=True,
        epoch=epoch,
        step=step,
        author=spec.author,
        dataset_seconds=dataset_seconds,
        speakers=speakers,
    )
    return save_export(path, build_export(export_generator_weights(generator), generator.shape, info))


def export_periodic(
    spec: JobSpec, trained: TrainResult, outdir: Path, dataset_seconds: float
) -> dict[int, Path]:
    """`<name>_e<epoch>.pth` for every `--save-every` snapshot the trainer kept."""
    out: dict[int, Path] = {}
    ckpt_dir = trained.checkpoint.parent
    for snapshot in sorted(ckpt_dir.glob("generator_e*.pt")):
        epoch = int(snapshot.stem.removeprefix("generator_e"))
        target = outdir / f"{spec.model_name}_e{epoch}.pth"
        if not target.exists():
            export_model(
                load_generator(spec, snapshot), target, spec, epoch, 0, dataset_seconds, trained.speakers
            )
        out[epoch] = target
    return out


def pick_preview_segment(segment_ids: list[str], spec: JobSpec) -> str:
    """The first held-out segment: the model never trained on it, so the preview is honest."""
    from rvc_core.train import TrainConfig
    from rvc_core.train.data import split_validation

    split = split_validation(segment_ids, TrainConfig().validation_fraction, spec.seed)
    return split.validation_ids[0]


def write_preview(
    generator: Any, wd: WorkDir, segment_id: str, index_path: Path, out: Path, spec: JobSpec, device: str
) -> Path:
    from rvc_core.audio_io import write_wav_float32
    from rvc_core.infer import RetrievalIndex, convert

    features = np.load(wd.features_dir / f"{segment_id}.npy")
    f0 = np.load(wd.f0_dir / f"{segment_id}.npy")
    speaker = int(segment_id.split("_", 1)[0])
    try:
        audio = convert(
            generator.to(device),
            features,
            f0,
            index=RetrievalIndex.load(index_path),
            # The held-out segment's own frames are in the index (RVC indexes every frame): skip them
            # so the preview shows retrieval from the training data.
            exclude_exact=True,
            speaker_id=speaker,
            device=device,
        )
    finally:
        generator.to("cpu")  # give the device memory back even when conversion fails
    write_wav_float32(out, audio, spec.sample_rate)
    return out


def training_metrics(trained: TrainResult) -> dict[str, Any]:
    return {
        "epochs": trained.epoch,
        "steps": trained.step,
        "best_epoch": trained.best_epoch,
        "best_validation_mel": trained.best_validation_mel,
        "batch_size": trained.batch_size,
        "batch_size_reductions": [r.__dict__ for r in trained.batch_size_reductions],
        "skipped_nonfinite_steps": trained.skipped_steps,
        "skips": trained.skips,  # per network and kind: non-finite loss, gradients, fp16 overflow
        "precision": trained.precision,
        "train_segments": trained.train_segments,
        "validation_segments": trained.validation_segments,
        "speakers": trained.speakers,
        "train_audio_seconds": round(trained.train_seconds, 3),
        "history": [h.__dict__ for h in trained.history],
    }


def write_report_plot(
    out: Path, trained: TrainResult, prepared: PreparedDataset, wd: WorkDir, spec: JobSpec
) -> Path:
    from rvc_core.plots import write_report_png
    from rvc_core.train.config import MEL_LOSS_WEIGHT

    history = [
        {
            "epoch": h.epoch,
            "g_total": h.losses.get("g_total", float("nan")),
            "d_total": h.losses.get("d_total", float("nan")),
            # g_mel carries RVC's ×45 weight; plot the plain L1 beside the validation L1.
            "mel": h.losses.get("g_mel", float("nan")) / MEL_LOSS_WEIGHT,
            "val_mel": h.validation_mel,
        }
        for h in trained.history
    ]
    f0_files = sorted(wd.f0_dir.glob("*.npy"))[:2000]  # bounded: the distribution, not every frame
    voiced = np.concatenate([f[f > 0] for f in (np.load(p) for p in f0_files)]) if f0_files else np.zeros(0)
    return write_report_png(
        out,
        history,
        prepared.report.segment_seconds,
        voiced,
        f"{spec.model_name} — {spec.version} {sample_rate_label(spec.sample_rate)}",
    )


def write_model_zip(out: Path, members: list[Path]) -> Path:
    """`<name>.zip` holding the `.pth` and the index, as other trainers deliver."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for m in members:
            zf.write(m, arcname=m.name)
    return out
