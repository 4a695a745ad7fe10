"""Micro-benchmark of the training step (v2, 40 kHz, 12 800-sample window) on synthetic data.

    python bench/train.py --preset tiny --batch-size 4 --steps 30 [--device cpu|cuda] [--compile] [--json]

Builds an in-memory dataset of 3.7 s segments (random features, tone audio and its spectrograms,
not timed), then runs `--warmup` untimed steps and `--steps` timed ones exactly as `train` does
(batch assembly + `train_step`). Prints steps/s, seconds of training audio per second
(batch × window / rate × steps/s), the share of wall time spent assembling batches, peak RSS and
peak GPU memory, as a table and (with --json) as one JSON line. With --compile the networks are
compiled as `train` does it (`rvc_core.train.compiled`); the first warmup step, which pays for the
compilation, is reported apart (`first_step_seconds`) and never counted in the step rate. The CPU
convolution kernels are the ones `train` picks (`rvc_core.train.kernels`; `onednn` in the output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VERSION = "v2"
SAMPLE_RATE = 40000  # Hz
SEGMENT_SECONDS = 3.7  # RVC's default segment length
ITEMS = 64  # segments in the synthetic dataset
LEARNING_RATE = 1e-4  # TrainConfig's default


def synthetic_dataset(device: str, items: int, seed: int = 0) -> Any:
    import numpy as np
    import torch

    from rvc_core.models.audio import linear_spectrogram, mel_from_linear
    from rvc_core.pitch import coarse_pitch
    from rvc_core.spec import FEATURE_DIMS, SPECTROGRAMS
    from rvc_core.testing import harmonic_tone
    from rvc_core.train.data import ResidentDataset

    spec = SPECTROGRAMS[SAMPLE_RATE]
    rng = np.random.default_rng(seed)
    half = device.startswith("cuda")
    store = torch.float16 if half else torch.float32
    frames = int(SEGMENT_SECONDS * 100)
    phone, pitch, pitchf, specs, mels, waves = [], [], [], [], [], []
    for _ in range(items):
        f0 = float(rng.uniform(100, 300))
        audio = torch.from_numpy(harmonic_tone(f0, frames / 100, SAMPLE_RATE)).to(device)
        magnitude = linear_spectrogram(audio.unsqueeze(0), spec)[0][:, :frames]
        specs.append(magnitude.to(dtype=store))
        mels.append(mel_from_linear(magnitude.unsqueeze(0), spec)[0])
        waves.append(audio[: frames * spec.hop_length])
        phone.append(torch.from_numpy(rng.standard_normal((frames, FEATURE_DIMS[VERSION]))).to(device, store))
        hz = np.full(frames, f0, dtype=np.float32)
        pitchf.append(torch.from_numpy(hz).to(device))
        pitch.append(torch.from_numpy(coarse_pitch(hz)).to(device))
    return ResidentDataset(
        ids=tuple(f"s{i}" for i in range(items)),
        frames=(frames,) * items,
        speaker_ids=(0,) * items,
        phone=phone,
        pitch=pitch,
        pitchf=pitchf,
        spec=specs,
        mel=mels,
        wave=waves,
        hop=spec.hop_length,
        storage=device,
        device=device,
    )


def run(
    preset: str,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    compile_step: bool = False,
    precision_name: str = "auto",
) -> dict[str, Any]:
    import torch

    from rvc_core.models import build_discriminator, build_generator
    from rvc_core.spec import SPECTROGRAMS, TRAINING_SEGMENT_SAMPLES
    from rvc_core.train.loop import adamw
    from rvc_core.train.precision import GuardedStepper, choose_precision
    from rvc_core.train.step import Trainee, train_step

    torch.manual_seed(0)
    g = build_generator(VERSION, SAMPLE_RATE, preset=preset).to(device).train()
    d = build_discriminator(VERSION, preset=preset).to(device).train()
    g_params, d_params = list(g.parameters()), list(d.parameters())
    optim_g, optim_d = adamw(g_params, LEARNING_RATE), adamw(d_params, LEARNING_RATE)
    trainee = Trainee(g, d, optim_g, optim_d, g_params, d_params)
    counters: Any = None
    if compile_step:
        from rvc_core.train.compiled import LENGTH_MULTIPLE, compile_counters, compile_trainee

        compile_trainee(trainee)
        counters = compile_counters

    def collate(indices: list[int]) -> Any:
        # Bucketed lengths only when compiled (a keyword older checkouts lack: A/B runs use this file).
        return (
            data.collate(indices, length_multiple=LENGTH_MULTIPLE) if compile_step else data.collate(indices)
        )

    # One argument unless asked: older checkouts in A/B runs take no precision.
    precision = (
        choose_precision(device, precision_name) if precision_name != "auto" else choose_precision(device)
    )
    kernels = contextlib.ExitStack()
    onednn = True
    try:
        from rvc_core.train.kernels import convolution_kernels
    except ImportError:  # an older checkout in an A/B run: oneDNN everywhere, as it had
        pass
    else:  # the convolution kernels `train` picks for these networks
        onednn = kernels.enter_context(convolution_kernels(device, d, precision.name))
    stepper = GuardedStepper(precision, device)
    data = synthetic_dataset(device, max(ITEMS, batch_size))
    spec = SPECTROGRAMS[SAMPLE_RATE]
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def batches(n: int) -> list[list[int]]:
        return [[(i * batch_size + j) % len(data) for j in range(batch_size)] for i in range(n)]

    first_step_seconds = None
    for indices in batches(max(warmup, 1)):
        t0 = time.perf_counter()
        train_step(
            trainee,
            collate(indices),
            precision=precision,
            stepper=stepper,
            spec=spec,
        )
        sync()
        if first_step_seconds is None:
            first_step_seconds = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    collate_seconds = 0.0
    cpu_started = time.process_time()
    started = time.perf_counter()
    for indices in batches(steps):
        t0 = time.perf_counter()
        batch = collate(indices)
        collate_seconds += time.perf_counter() - t0
        result = train_step(trainee, batch, precision=precision, stepper=stepper, spec=spec)
    final_losses = result.losses.tolist()  # the one sync of the timed loop
    sync()
    kernels.close()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    steps_per_second = steps / wall
    window = TRAINING_SEGMENT_SAMPLES[(VERSION, SAMPLE_RATE)]
    return {
        "preset": preset,
        "device": device,
        "precision": precision.name,
        "batch_size": batch_size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "compiled": compile_step,
        "onednn": onednn,
        "first_step_seconds": first_step_seconds,
        "seconds_per_step": wall / steps,
        # CPU seconds of this process per step: less disturbed than wall time on a shared machine.
        "cpu_seconds_per_step": cpu / steps,
        "steps_per_second": steps_per_second,
        "audio_seconds_per_second": batch_size * window / SAMPLE_RATE * steps_per_second,
        "data_loading_share": collate_seconds / wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "losses_finite": all(v == v and abs(v) != float("inf") for v in final_losses),
        **({f"compile_{k}": v for k, v in counters().items()} if counters else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("full", "tiny"), default="tiny")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks first")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (as train: fp32 on CPU), fp32, bf16 or fp16, as train's option",
    )
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run(
        args.preset, args.batch_size, args.steps, args.warmup, args.device, args.compile, args.precision
    )
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
