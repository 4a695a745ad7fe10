"""Benchmark of work slices: a whole job run as the service runs it, one `run_job` call per slice.

    python bench/slices.py [--minutes 60] [--slice 30] [--epochs 1] [--assets none|random-full|DIR]
                           [--f0-method rmvpe] [--baseline] [--json]

Each call gets a deadline of now + `--slice` seconds, like `consumer/work/slices.py`, and the loop
goes on until the job is finished. Reported per slice: its wall time, its overrun beyond the
budget (goal: under 10 % of the budget, never over 60 s), where it paused and its seconds per stage
(`JobProgress.timings`). The total overhead of slicing is the sum of the slices' wall times less
one unbudgeted run of the same job (`--baseline`, which doubles the cost) or, without it, less the
sum of the stage times (then it counts only the time outside stages, not repeated start-ups).
The dataset (synthetic speech-like 44.1 kHz wav files of 2 minutes, see bench/prepare.py) is
generated first and not timed. Tiny preset, no pretrained weights, CPU unless `--device`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.prepare import RANDOM_FULL, make_dataset

OVERRUN_SHARE_GOAL = 0.10
OVERRUN_MAX_SECONDS = 60.0


def _environment(assets: str, device: str, workers: int | None) -> tuple[Any, dict[str, str]]:
    from rvc_core.jobspec import JobEnvironment

    return JobEnvironment(assets=assets, pretrained="none", device=device, workers=workers), {}


def _patch_random_full(assets: str) -> None:
    """`--assets random-full`: the real architectures with random weights (bench/prepare.py)."""
    if assets != RANDOM_FULL:
        return
    import rvc_core.job as job
    from rvc_core.assets import AssetStore

    original = AssetStore.from_option

    def from_option(option: str | None, environ: Any) -> AssetStore:
        return AssetStore.random_full() if option == RANDOM_FULL else original(option, environ)

    job.AssetStore.from_option = staticmethod(from_option)  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rvc_core.job import run_job
    from rvc_core.jobspec import JobSpec

    _patch_random_full(args.assets)
    env, environ = _environment(args.assets, args.device, args.workers)
    spec = JobSpec(model_name="bench", epochs=args.epochs, preset="tiny", f0_method=args.f0_method)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zip_path = make_dataset(root / "voice.zip", args.minutes)
        baseline = None
        if args.baseline:
            started = time.monotonic()
            whole = run_job(zip_path, root / "w0", root / "o0", spec, env, environ=environ)
            baseline = {"wall_seconds": time.monotonic() - started, "timings": whole.timings}
        slices: list[dict[str, Any]] = []
        while True:
            started = time.monotonic()
            result = run_job(
                zip_path, root / "w", root / "o", spec, env, deadline=started + args.slice, environ=environ
            )
            wall = time.monotonic() - started
            slices.append(
                {
                    "slice": len(slices) + 1,
                    "status": result.status,
                    "stage": result.stage,
                    "epoch": result.epoch,
                    "step": result.step,
                    "wall_seconds": round(wall, 3),
                    "overrun_seconds": round(max(0.0, wall - args.slice), 3),
                    "timings": result.timings,
                }
            )
            if not args.json:
                print(_row(slices[-1], args.slice), file=sys.stderr, flush=True)
            if result.status == "finished" or len(slices) >= args.max_slices:
                break
        report = json.loads((root / "o" / "report.json").read_text()) if result.status == "finished" else {}
    total = sum(s["wall_seconds"] for s in slices)
    stage_sum = sum(v for s in slices for k, v in s["timings"].items() if k != "total")
    worst = max(s["overrun_seconds"] for s in slices)
    return {
        "minutes": args.minutes,
        "slice_seconds": args.slice,
        "epochs": args.epochs,
        "assets": args.assets,
        "f0_method": args.f0_method,
        "device": args.device,
        "finished": slices[-1]["status"] == "finished",
        "slices": slices,
        "total_wall_seconds": round(total, 3),
        "sum_of_stage_seconds": round(stage_sum, 3),
        "baseline": baseline,
        "overhead_seconds": round(total - (baseline["wall_seconds"] if baseline else stage_sum), 3),
        "overhead_against": "one unbudgeted run" if baseline else "sum of stage times",
        "worst_overrun_seconds": worst,
        "slices_over_10_percent": sum(s["overrun_seconds"] > OVERRUN_SHARE_GOAL * args.slice for s in slices),
        "slices_over_60_s": sum(s["overrun_seconds"] > OVERRUN_MAX_SECONDS for s in slices),
        "index": report.get("index"),
    }


def _row(s: dict[str, Any], budget: float) -> str:
    stages = " ".join(f"{k}={v:.1f}" for k, v in s["timings"].items() if k != "total" and v >= 0.05)
    share = 100 * s["overrun_seconds"] / budget
    return (
        f"{s['slice']:>5} {s['status']:<8} {s['stage']:<10} {s['wall_seconds']:>8.1f} "
        f"{s['overrun_seconds']:>8.1f} {share:>6.0f}%  {stages}"
    )


def table(r: dict[str, Any]) -> str:
    head = (
        f"{'slice':>5} {'status':<8} {'stage':<10} {'wall s':>8} {'overrun':>8} {'share':>7}  stage seconds"
    )
    lines = [head, "-" * len(head), *(_row(s, r["slice_seconds"]) for s in r["slices"])]
    lines += [
        "",
        f"{r['minutes']:g} min of audio, {r['epochs']} epoch(s), tiny preset, assets {r['assets']}, "
        f"{r['f0_method']}, {r['device']}; slices of {r['slice_seconds']:g} s: {len(r['slices'])} slices, "
        f"finished: {r['finished']}",
        f"worst overrun {r['worst_overrun_seconds']:.1f} s; slices over 10 % of the budget: "
        f"{r['slices_over_10_percent']}; over 60 s: {r['slices_over_60_s']}",
        f"total wall {r['total_wall_seconds']:.1f} s, sum of stage times {r['sum_of_stage_seconds']:.1f} s"
        + (f", one unbudgeted run {r['baseline']['wall_seconds']:.1f} s" if r["baseline"] else ""),
        f"overhead {r['overhead_seconds']:.1f} s (against {r['overhead_against']})",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--slice", type=float, default=30.0, help="budget of each run_job call, seconds")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--f0-method", default="rmvpe")
    p.add_argument("--assets", default="none", help=f"none, {RANDOM_FULL} or a folder with the weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--baseline", action="store_true", help="also time one unbudgeted run (doubles the cost)")
    p.add_argument("--max-slices", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
