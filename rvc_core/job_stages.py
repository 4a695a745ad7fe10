"""The stages of `run_job` after preparation: train, then index, export, preview, report and zip.

Every output is written atomically, so re-running `finish_job` after a crash simply rewrites them.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_core.assets import AssetStore
from rvc_core.atomic import atomic_path, write_json
from rvc_core.export import ExportInfo, build_export, save_export
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.layout import WorkDir
from rvc_core.prepare import PreparedDataset, run_prepare
from rvc_core.progress import ProgressCallback, ProgressEvent
from rvc_core.spec import sample_rate_label

if TYPE_CHECKING:
    from rvc_core.train import TrainResult

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def prepare_stage(
    dataset_zip: Path,
    workdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    assets: AssetStore,
    emit: ProgressCallback,
) -> PreparedDataset:
    return run_prepare(
        dataset_zip,
        workdir,
        spec.prepare_config(),
        assets=assets,
        device=env.device,
        workers=env.workers,
        progress=emit,
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
    )


def train_stage(
    workdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    deadline: float | None,
    should_stop: Callable[[], bool] | None,
    emit: ProgressCallback,
    environ: Mapping[str, str],
) -> TrainResult:
    from rvc_core.train import train

    config = train_config(spec, env, environ)
    return train(
        workdir,
        config,
        ckpt_dir=Path(workdir) / CHECKPOINT_DIR,
        device=env.device,
        deadline=deadline,
        should_stop=should_stop,
        progress=emit,
    )


def finish_job(
    prepared: PreparedDataset,
    trained: TrainResult,
    workdir: Path,
    outdir: Path,
    spec: JobSpec,
    env: JobEnvironment,
    assets: AssetStore,
    emit: ProgressCallback,
) -> JobProgress:
    """Index, export, preview, report, zip: the outputs users receive."""
    from rvc_core.index import build_index, stack_features

    outdir.mkdir(parents=True, exist_ok=True)
    wd = prepared.workdir
    timings: dict[str, float] = {}
    segment_ids = [s.id for s in prepared.segments]

    started = time.perf_counter()
    emit(ProgressEvent(stage="index", message=f"{len(segment_ids)} segment(s)"))
    for stale in outdir.glob(f"added_IVF*_Flat_nprobe_1_{spec.model_name}_{spec.version}.index"):
        stale.unlink()  # a rerun may choose another n; keep exactly one index
    features = stack_features([wd.features_dir / f"{sid}.npy" for sid in segment_ids])
    index = build_index(
        features, outdir, spec.model_name, spec.version, seed=spec.seed, use_gpu=env.device.startswith("cuda")
    )
    timings["index"] = time.perf_counter() - started

    started = time.perf_counter()
    emit(ProgressEvent(stage="export", message=f"{spec.model_name}.pth"))
    generator = load_trained_generator(spec, trained)
    exported_epoch = trained.best_epoch if spec.export == "best" and trained.best_epoch else trained.epoch
    dataset_seconds = prepared.report.totals.usable_seconds
    pth = export_model(
        generator,
        outdir / f"{spec.model_name}.pth",
        spec,
        exported_epoch,
        trained.step,
        dataset_seconds,
        trained.speakers,
    )
    extra = export_periodic(spec, trained, outdir, dataset_seconds)
    timings["export"] = time.perf_counter() - started

    started = time.perf_counter()
    emit(ProgressEvent(stage="preview", message="converting one held-out segment"))
    preview_id = pick_preview_segment(segment_ids, spec)
    preview = write_preview(generator, wd, preview_id, index.path, outdir / "preview.wav", spec, env.device)
    timings["preview"] = time.perf_counter() - started

    metrics = training_metrics(trained)
    report = {
        "model_name": spec.model_name,
        "spec": _plain(spec.__dict__),
        "dataset": prepared.report.to_json(),
        "training": metrics,
        "index": {
            "file": index.path.name,
            "n_lists": index.n_lists,
            "vectors": index.vectors,
            "dim": index.dim,
        },
        "exported_epoch": exported_epoch,
        "preview_segment": preview_id,
        "timings_seconds": {**timings, "training": round(sum(e.seconds for e in trained.history), 3)},
    }
    report_path = outdir / "report.json"
    write_json(report_path, report)
    png = write_report_plot(outdir / "report.png", trained, prepared, wd, spec)
    model_zip = write_model_zip(outdir / f"{spec.model_name}.zip", [pth, index.path])
    artifacts = {
        "pth": pth,
        "index": index.path,
        "preview": preview,
        "report": report_path,
        "report_png": png,
        "zip": model_zip,
    }
    artifacts.update({f"pth_e{epoch}": path for epoch, path in extra.items()})
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
