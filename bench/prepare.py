"""Benchmark of `prepare`: audio-seconds per wall-second and peak memory, stage by stage.

    python bench/prepare.py --minutes 10 60 [--workers 2] [--f0-method rmvpe] [--assets DIR|none]
                            [--device cpu|cuda] [--json]

Each dataset size runs in its own process, so peak RSS is that size's alone (parent and worker
processes reported separately). The dataset is generated first (synthetic speech-like audio,
44.1 kHz 16-bit wav files of 2 minutes) and its generation is not timed. With `--assets none` the
pitch and feature networks are small random stand-ins: their speed says nothing about the real
ones; pass `--assets DIR` with the real weights for that.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("extract", "preprocess", "pitch", "features")


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
    from rvc_core.assets import AssetStore
    from rvc_core.config import PrepareConfig
    from rvc_core.prepare import run_prepare
    from rvc_core.progress import ProgressEvent

    with tempfile.TemporaryDirectory() as tmp:
        zip_path = make_dataset(Path(tmp) / "voice.zip", minutes)
        marks: list[tuple[str, float]] = []

        def on_progress(e: ProgressEvent) -> None:
            if not marks or marks[-1][0] != e.stage:
                marks.append((e.stage, time.perf_counter()))

        store = AssetStore.from_option(assets, {})
        t0 = time.perf_counter()
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
        return {
            "minutes": minutes,
            "audio_seconds": audio_seconds,
            "usable_seconds": prepared.report.totals.usable_seconds,
            "segments": len(prepared.segments),
            "wall_seconds": end - t0,
            "stage_seconds": stage_seconds,
            "peak_rss_mb_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_mb_workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }


def table(rows: list[dict]) -> str:
    head = f"{'minutes':>7} {'stage':<11} {'seconds':>8} {'x real-time':>11} {'peak RSS MB (main / workers)':>29}"  # noqa: E501
    lines = [head, "-" * len(head)]
    for r in rows:
        for stage in STAGES:
            if stage in r["stage_seconds"]:
                s = r["stage_seconds"][stage]
                lines.append(
                    f"{r['minutes']:>7g} {stage:<11} {s:>8.2f} {r['audio_seconds'] / max(s, 1e-9):>11.0f}"
                )
        lines.append(
            f"{r['minutes']:>7g} {'total':<11} {r['wall_seconds']:>8.2f} "
            f"{r['audio_seconds'] / r['wall_seconds']:>11.0f} "
            f"{r['peak_rss_mb_parent']:>14.0f} / {r['peak_rss_mb_workers']:<12.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--f0-method", default="rmvpe")
    p.add_argument("--assets", default="none")
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
