"""`python -m rvc_core …`: prepare, train and assets, with RVC's option names.

Exit status 0 on success; on a rejected dataset or bad option, status 2 and one line
`error: <code>: <message>` on stderr (the report is still written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rvc_core.cli_options import EXIT_REJECTED, add_dataset_options, resolve_device
from rvc_core.errors import ConfigMismatch, RvcError


def add_prepare_options(p: argparse.ArgumentParser) -> None:
    add_dataset_options(p)
    p.add_argument("--out", type=Path, required=True, help="work dir (created; resumable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rvc_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_options(sub.add_parser("prepare", help="zip -> segments, pitch and content features"))
    from rvc_core.train_cli import add_train_options

    add_train_options(sub.add_parser("train", help="zip -> trained, exported model (.pth + .index)"))
    assets = sub.add_parser("assets", help="list or download the weight files")
    assets.add_argument(
        "assets_args", nargs=argparse.REMAINDER, help="download --dest DIR | list --assets DIR"
    )
    return parser


def cmd_prepare(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from rvc_core.assets import AssetStore
    from rvc_core.config import PrepareConfig
    from rvc_core.prepare import run_prepare
    from rvc_core.report import load_report, summary_text

    config = None
    try:
        config = PrepareConfig(
            sample_rate=args.sample_rate,
            version=args.version,
            f0_method=args.f0_method,
            segment_seconds=args.segment_seconds,
        )
        assets = AssetStore.from_option(args.assets, env)
        prepared = run_prepare(
            args.dataset,
            args.out,
            config,
            assets=assets,
            device=resolve_device(args.device),
            workers=args.workers,
        )
    except RvcError as err:
        # run_prepare has already written the rejection into report.json; show it.
        if config is not None and not isinstance(err, ConfigMismatch) and (args.out / "report.json").exists():
            print(summary_text(load_report(args.out / "report.json")))
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_REJECTED
    print(summary_text(prepared.report))
    print(f"prepared: {prepared.workdir.root} ({len(prepared.segments)} segments)")
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        return cmd_prepare(args, env)
    if args.command == "train":
        from rvc_core.train_cli import cmd_train

        return cmd_train(args, env)
    from rvc_core.assets import assets_cli

    return assets_cli(list(args.assets_args))
