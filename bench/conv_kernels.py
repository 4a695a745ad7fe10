"""Micro-benchmark of the convolutions that make up the CPU training step.

    python bench/conv_kernels.py [--threads 2] [--presets tiny full] [--json]

Part 1, `layouts`: the period discriminators' 1024 -> 1024 (5, 1) convolution on the discriminator
step's batch (real + generated audio of a batch of 4, period 3), forward alone and forward plus
backward (input and weight gradients), in the forms tried for it: NCHW with oneDNN (what training
runs), channels-last with oneDNN, the period axis folded into the batch as a 1-D convolution, and
ATen's own kernels. The forward's GFLOP/s shows how close the kernel runs to the machine's peak.

Part 2, `kernels`: every convolution call of one training step of a preset (shapes recorded with
hooks during a real step), each timed forward plus backward with oneDNN and with ATen's kernels,
summed. A call made under `no_grad` is timed with a backward too, so the sums overstate the step a
little; they compare the two kernel families, which is what `rvc_core.train.kernels` chooses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH, CHANNELS, ROWS, PERIOD, KERNEL = 8, 1024, 53, 3, 5  # the (5, 1) layer at period 3
MIN_SECONDS = 0.3  # time each case for at least this long


def timed(fn: Callable[[], object], *, onednn: bool = True) -> float:
    """Mean seconds per call after one warm-up call, with oneDNN on or off."""
    import torch

    with torch.backends.mkldnn.flags(enabled=onednn):
        fn()
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < MIN_SECONDS:
            fn()
            calls += 1
        return (time.perf_counter() - started) / calls


def layouts() -> list[dict[str, Any]]:
    import torch
    from torch.nn import functional as F

    x = torch.randn(BATCH, CHANNELS, ROWS, PERIOD, requires_grad=True)
    w = torch.randn(CHANNELS, CHANNELS, KERNEL, 1, requires_grad=True)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w_1d = w.detach().squeeze(-1).clone().requires_grad_()

    def nchw() -> torch.Tensor:
        return F.conv2d(x, w, padding=(KERNEL // 2, 0))

    def channels_last() -> torch.Tensor:
        return F.conv2d(x_last, w, padding=(KERNEL // 2, 0))

    def folded() -> torch.Tensor:  # [B, C, H, P] -> [B*P, C, H], a 1-D convolution, and back
        rows = x.permute(0, 3, 1, 2).reshape(BATCH * PERIOD, CHANNELS, ROWS)
        out = F.conv1d(rows, w_1d, padding=KERNEL // 2)
        return out.reshape(BATCH, PERIOD, CHANNELS, ROWS).permute(0, 2, 3, 1)

    flop = 2 * BATCH * CHANNELS * ROWS * PERIOD * CHANNELS * KERNEL
    cases = [("nchw, oneDNN", nchw, True), ("channels-last, oneDNN", channels_last, True)]
    cases += [("1-D folded, oneDNN", folded, True), ("nchw, ATen", nchw, False)]
    rows = []
    for name, form, onednn in cases:

        def forward(form: Callable[[], torch.Tensor] = form) -> None:
            with torch.no_grad():
                form()

        def both(form: Callable[[], torch.Tensor] = form) -> None:
            form().sum().backward()

        seconds = timed(forward, onednn=onednn)
        rows.append(
            {
                "form": name,
                "forward_ms": 1000 * seconds,
                "forward_gflops": flop / seconds / 1e9,
                "forward_backward_ms": 1000 * timed(both, onednn=onednn),
            }
        )
    return rows


def step_convolutions(preset: str) -> Counter[tuple[Any, ...]]:
    """(kind, input shape, weight shape, stride, padding, dilation, groups) -> calls in one step."""
    import torch
    import train as train_bench  # bench/train.py: the same synthetic batch and step
    from torch import nn

    from rvc_core.models import build_discriminator, build_generator
    from rvc_core.spec import SPECTROGRAMS
    from rvc_core.train.loop import adamw
    from rvc_core.train.precision import GuardedStepper, choose_precision
    from rvc_core.train.step import Trainee, train_step

    torch.manual_seed(0)
    g = build_generator(train_bench.VERSION, train_bench.SAMPLE_RATE, preset=preset).train()
    d = build_discriminator(train_bench.VERSION, preset=preset).train()
    g_params, d_params = list(g.parameters()), list(d.parameters())
    trainee = Trainee(g, d, adamw(g_params, 1e-4), adamw(d_params, 1e-4), g_params, d_params)
    calls: Counter[tuple[Any, ...]] = Counter()

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        kind = "t" if isinstance(module, nn.ConvTranspose1d) else f"{module.weight.dim() - 2}d"
        calls[(kind, tuple(inputs[0].shape), tuple(module.weight.shape), module.stride, module.padding,
               module.dilation, module.groups)] += 1  # fmt: skip

    for network in (g, d):
        for module in network.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.register_forward_hook(record)
    data = train_bench.synthetic_dataset("cpu", 8)
    precision = choose_precision("cpu")
    stepper = GuardedStepper(precision, "cpu")
    spec = SPECTROGRAMS[train_bench.SAMPLE_RATE]
    train_step(trainee, data.collate([0, 1, 2, 3]), precision=precision, stepper=stepper, spec=spec)
    return calls


def _convolution(kind: str, x: Any, w: Any, *params: Any) -> Callable[[], Any]:
    """The recorded call: `params` are (stride, padding, dilation, groups) as the module has them."""
    from torch.nn import functional as F

    stride, padding, dilation, groups = params
    if kind == "t":
        return lambda: F.conv_transpose1d(x, w, None, stride, padding, 0, groups, dilation)
    op = F.conv1d if kind == "1d" else F.conv2d
    return lambda: op(x, w, None, stride, padding, dilation, groups)


def kernels(preset: str) -> dict[str, Any]:
    import torch

    totals = {"onednn": 0.0, "aten": 0.0, "best_of_each_layer": 0.0}
    calls = step_convolutions(preset)
    for (kind, x_shape, w_shape, stride, padding, dilation, groups), count in calls.items():
        x = torch.randn(x_shape, requires_grad=True)
        w = torch.randn(w_shape, requires_grad=True)
        conv = _convolution(kind, x, w, stride, padding, dilation, groups)

        def both(conv: Callable[[], torch.Tensor] = conv) -> None:
            conv().sum().backward()

        with_onednn, with_aten = timed(both, onednn=True), timed(both, onednn=False)
        totals["onednn"] += count * with_onednn
        totals["aten"] += count * with_aten
        totals["best_of_each_layer"] += count * min(with_onednn, with_aten)
    return {"preset": preset, "calls": sum(calls.values()), **{f"{k}_seconds": v for k, v in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--presets", nargs="*", default=["tiny", "full"], choices=("tiny", "full"))
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/train.py's synthetic step
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "layouts": layouts()}
    result["kernels"] = [kernels(preset) for preset in args.presets]
    print(f"{'(5, 1) conv, batch 8, 1024 ch':<24} {'fwd ms':>8} {'GFLOP/s':>8} {'fwd+bwd ms':>11}")
    for row in result["layouts"]:
        print(
            f"{row['form']:<24} {row['forward_ms']:>8.1f} {row['forward_gflops']:>8.0f} "
            f"{row['forward_backward_ms']:>11.1f}"
        )
    print(f"\n{'one step, fwd+bwd (s)':<24} {'calls':>6} {'oneDNN':>8} {'ATen':>8} {'best each':>10}")
    for row in result["kernels"]:
        print(
            f"{row['preset']:<24} {row['calls']:>6} {row['onednn_seconds']:>8.3f} "
            f"{row['aten_seconds']:>8.3f} {row['best_of_each_layer_seconds']:>10.3f}"
        )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
