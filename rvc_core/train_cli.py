"""`python -m rvc_core train DATASET.zip --out OUTDIR`: the whole job on one machine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from rvc_core.cli_options import EXIT_REJECTED, add_dataset_options, resolve_device
from rvc_core.errors import ConfigError, RvcError
from rvc_core.jobspec import COMPILE_CHOICES
from rvc_core.spec import PRESETS
from rvc_core.train.config import EXPORT_CHOICES
from rvc_core.train.precision import PRECISION_CHOICES


def add_train_options(p: argparse.ArgumentParser) -> None:
    add_dataset_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (model, index, preview, report)")
    p.add_argument("--work", type=Path, default=None, help="work dir for stages and checkpoints (OUT/work)")
    p.add_argument("--model-name", default=None, help="[A-Za-z0-9_-]{1,64}; default: the zip's stem")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=None, help="default: from free GPU memory; 4 on CPU")
    p.add_argument("--pretrained", default=None, help="folder with pretrained_v2/f0G40k.pth …, or 'none'")
    p.add_argument("--preset", choices=PRESETS, default="full", help="tiny: small widths (CPU)")
    p.add_argument(
        "--save-every", type=int, default=None, help="also export <name>_e<epoch>.pth every E epochs"
    )
    p.add_argument("--export", choices=EXPORT_CHOICES, default="best", help="best by validation, or last")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tensorboard", type=Path, default=None, help="write TensorBoard scalars here")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --work")
    p.add_argument("--author", default=None, help="shown in Applio's model info")
    p.add_argument(
        "--compile",
        choices=tuple(COMPILE_CHOICES),
        default="auto",
        help="torch.compile the networks (first step slower, then faster where it wins); "
        "auto = where it wins, see docs/performance.md",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="autocast precision: auto (bf16 or fp16 on a GPU, fp32 on CPU); bf16 also on a CPU with "
        "native bf16 (about a third less time per step there, other numbers than fp32)",
    )


def cmd_train(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from rvc_core.job import run_job
    from rvc_core.jobspec import JobEnvironment, JobSpec
    from rvc_core.names import sanitise_model_name

    work = args.work or args.out / "work"
    try:
        if work.exists() and any(work.iterdir()) and not args.resume:
            raise ConfigError(
                f"{work} already holds a run: pass --resume to continue it, or use another --out"
            )
        spec = JobSpec(
            model_name=args.model_name or sanitise_model_name(args.dataset.stem),
            epochs=args.epochs,
            sample_rate=args.sample_rate,
            version=args.version,
            f0_method=args.f0_method,
            segment_seconds=args.segment_seconds,
            batch_size=args.batch_size,
            save_every=args.save_every,
            author=args.author,
            preset=args.preset,
            seed=args.seed,
            export=args.export,
        )
        job_env = JobEnvironment(
            assets=args.assets,
            pretrained=args.pretrained,
            device=resolve_device(args.device),
            workers=args.workers,
            tensorboard=str(args.tensorboard) if args.tensorboard else None,
            compile=COMPILE_CHOICES[args.compile],
            precision=args.precision,
        )
        result = run_job(args.dataset, work, args.out, spec, job_env, environ=dict(env))
    except RvcError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_REJECTED
    summary = {
        "status": result.status,
        "epochs": result.metrics.get("epochs"),
        "best_epoch": result.metrics.get("best_epoch"),
        "best_validation_mel": result.metrics.get("best_validation_mel"),
        "artifacts": {k: str(v) for k, v in result.artifacts.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0
