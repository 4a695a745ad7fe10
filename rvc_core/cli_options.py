"""Options shared by `prepare` and `train`: one definition, defaults and help from `PrepareConfig`."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from rvc_core.config import PrepareConfig
from rvc_core.spec import F0_METHODS, SAMPLE_RATES, VERSIONS

CHOICES: dict[str, tuple[object, ...]] = {
    "sample_rate": SAMPLE_RATES,
    "version": VERSIONS,
    "f0_method": F0_METHODS,
}


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    """The zip, the preparation config (`--sample-rate`, `--version`, `--f0-method`,
    `--segment-seconds`) and where models run."""
    p.add_argument("dataset", type=Path, help="the voice zip")
    for f in fields(PrepareConfig):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            choices=CHOICES.get(f.name),
            default=f.default,
            help=f.metadata["help"],
        )
    p.add_argument(
        "--assets",
        default=None,
        help="folder of weight files, or 'none' for small random networks (tests/demo); default $RVC_ASSETS",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where models run")
    p.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: all cores)")


EXIT_REJECTED = 2


def resolve_device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
