"""Benchmark of `prepare`: audio-seconds per wall-second and peak memory, stage by stage.

    python bench/prepare.py --minutes 10 60 [--workers 2] [--f0-method rmvpe]
                            [--assets DIR|none|random-full] [--device cpu|cuda] [--json]

Each dataset size runs in its own process, so peak RSS is that size's alone (parent and worker
processes reported separately). The dataset is generated first (synthetic speech-like audio,
44.1 kHz 16-bit wav files of 2 minutes) and its generation is not timed. Loading each model (and,
for the first, starting CUDA) is timed as its own row (`load_pitch`, `load_features`), apart from
the stage's work; `pitch_features_x_realtime` is input audio over the pitch and feature work, and
`pitch_x_realtime` / `features_x_realtime` are input audio over each stage's work alone.

`--assets none`: the pitch and feature networks are small random stand-ins, whose speed says
nothing about the real ones. `--assets random-full`: the real architectures (RMVPE, HuBERT-base)
at full size with random weights, so speed and memory are those of the real networks without the
weight files (benchmarks only: the outputs are meaningless). `--assets DIR`: the real weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("extract", "preprocess", "pitch", "features")
ROWS = ("extract", "preprocess", "load_pitch", "pitch", "load_features", "features")
RANDOM_FULL = "random-full"
MODEL_STAGES = ("pitch", "features")  # rated apart and together, model loading excluded
# Stage -> (package, loader) that `prepare` looks up when the stage starts its model.
LOADERS = {
    "pitch": ("rvc_core.pitch", "load_pitch_extractor"),
    "features": ("rvc_core.features", "load_content_encoder"),
}


def asset_store(option: str) -> Any:
    from rvc_core.assets import AssetStore

    return AssetStore.random_full() if option == RANDOM_FULL else AssetStore.from_option(option, {})


@contextlib.contextmanager
def marked_loaders(marks: list[tuple[str, float]]) -> Iterator[None]:
    """Adds a `load_<stage>` mark when a stage starts loading its model, so loading (and CUDA's
    start-up) is not counted as the previous stage's work (prepare's first event of a stage comes
    after its model is loaded)."""
    import importlib

    saved = []
    for stage, (module_name, name) in LOADERS.items():
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        def marking(*args: Any, _stage: str = stage, _original: Any = original, **kwargs: Any) -> Any:
            marks.append((f"load_{_stage}", time.perf_counter()))
            return _original(*args, **kwargs)

        saved.append((module, name, original))
        setattr(module, name, marking)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def peak_gpu_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def make_dataset(path: Path, minutes: float, file_minutes: float = 2.0) -> Path:
    from rvc_core.testing import DatasetFile, DatasetSpec, build_dataset_zip

    n = max(1, round(minutes / file_minutes))
    files = [
        DatasetFile(
            f"take_{i:03d}.wav", seconds=minutes * 60 / n, sample_rate=44100, subtype="PCM_16", seed=i
        )
        for i in range(n)
    ]
    return build_dataset_zip(path, DatasetSpec(files))


def run_one(
    minutes: float, workers: int | None, f0_method: str, assets: str, device: str, until: str
) -> dict:
    """Runs prepare on a fresh dataset in this process and returns per-stage timings."""
    from rvc_core.config import PrepareConfig
    from rvc_core.prepare import run_prepare
    from rvc_core.progress import ProgressEvent

    with tempfile.TemporaryDirectory() as tmp:
        zip_path = make_dataset(Path(tmp) / "voice.zip", minutes)
        marks: list[tuple[str, float]] = []

        def on_progress(e: ProgressEvent) -> None:
            if not marks or marks[-1][0] != e.stage:
                marks.append((e.stage, time.perf_counter()))

        store = asset_store(assets)
        t0 = time.perf_counter()
        with marked_loaders(marks):
            prepared = run_prepare(
                zip_path,
                Path(tmp) / "work",
                PrepareConfig(f0_method=f0_method),
                assets=store,
                device=device,
                workers=workers,
                progress=on_progress,
                until=until,
            )
        end = time.perf_counter()
        bounds = [*marks, ("end", end)]
        stage_seconds = {bounds[i][0]: bounds[i + 1][1] - bounds[i][1] for i in range(len(bounds) - 1)}
        audio_seconds = prepared.report.totals.input_seconds
        model_seconds = sum(stage_seconds.get(stage, 0.0) for stage in MODEL_STAGES)
        return {
            "minutes": minutes,
            "assets": assets,
            "device": device,
            "f0_method": f0_method,
            "audio_seconds": audio_seconds,
            "usable_seconds": prepared.report.totals.usable_seconds,
            "segments": len(prepared.segments),
            "wall_seconds": end - t0,
            "stage_seconds": stage_seconds,
            "pitch_features_x_realtime": audio_seconds / model_seconds if model_seconds > 0 else None,
            **{
                f"{stage}_x_realtime": x_realtime(audio_seconds, stage_seconds.get(stage))
                for stage in MODEL_STAGES
            },
            "peak_rss_mb_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_mb_workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "peak_gpu_mib": peak_gpu_mib(device),
        }


def x_realtime(audio_seconds: float, work_seconds: float | None) -> float | None:
    """Input audio per second of a stage's work (None: the stage did not run)."""
    return audio_seconds / work_seconds if work_seconds else None


def table(rows: list[dict]) -> str:
    head = f"{'minutes':>7} {'stage':<13} {'seconds':>8} {'x real-time':>11} {'peak RSS MB (main / workers)':>29}"  # noqa: E501
    lines = [head, "-" * len(head)]
    for r in rows:
        for stage in ROWS:
            if stage in r["stage_seconds"]:
                s = r["stage_seconds"][stage]
                lines.append(
                    f"{r['minutes']:>7g} {stage:<13} {s:>8.2f} {r['audio_seconds'] / max(s, 1e-9):>11.0f}"
                )
        lines.append(
            f"{r['minutes']:>7g} {'total':<13} {r['wall_seconds']:>8.2f} "
            f"{r['audio_seconds'] / r['wall_seconds']:>11.0f} "
            f"{r['peak_rss_mb_parent']:>14.0f} / {r['peak_rss_mb_workers']:<12.0f}"
        )
        # The model stages' work rates, apart and together (the rows above hold the same per stage).
        for label, key in (("pitch", "pitch"), ("features", "features"), ("pitch+feat", "pitch_features")):
            rate = r.get(f"{key}_x_realtime")
            if rate is not None:
                lines.append(f"{r['minutes']:>7g} {label + ' work':<13} {'':>8} {rate:>11.1f}")
        if r["peak_gpu_mib"] is not None:
            lines.append(f"{r['minutes']:>7g} peak GPU memory {r['peak_gpu_mib']:.0f} MiB")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--f0-method", default="rmvpe")
    p.add_argument(
        "--assets",
        default="none",
        help=f"DIR with the real weights, none (tiny random networks) or {RANDOM_FULL} (full-size random)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--until", default="features", choices=STAGES, help="last stage to run")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.one is not None:
        print(
            json.dumps(run_one(args.one, args.workers, args.f0_method, args.assets, args.device, args.until))
        )
        return 0
    rows = []
    for minutes in args.minutes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(minutes),
            "--f0-method",
            args.f0_method,
            "--assets",
            args.assets,
            "--device",
            args.device,
            "--until",
            args.until,
        ]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
