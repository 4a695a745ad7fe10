"""Micro-benchmark of the preprocessing stage alone (decode, filter, slice, normalise, resample, write).

    python bench/prepare_preprocess.py --minutes 60 --files 30 --workers 2

Generates a dataset of 16-bit 44.1 kHz mono WAV files from `rvc_core.testing.synthetic_voice` in a
temporary folder (not timed), then runs `preprocess_all` in a fresh child process so that its peak
memory is not mixed with the generator's. The libraries the workers call are imported first and timed
apart (a process pays for them once). It prints audio seconds, wall seconds, the real-time factor and
the peak RSS of the measuring process (the workers are threads in it; the children's figure stays
for older checkouts, whose workers were processes).
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

import numpy as np

SOURCE_RATE = 44100  # Hz, like most user recordings
PIECE_SECONDS = 30.0  # files are assembled from a pool of distinct generated pieces
PIECE_POOL = 8


def generate_dataset(folder: Path, minutes: float, files: int) -> list[Path]:
    """`files` WAV files totalling `minutes`, written piece by piece so memory stays small."""
    import soundfile as sf

    from rvc_core.testing import synthetic_voice

    pieces = [synthetic_voice(PIECE_SECONDS, SOURCE_RATE, seed=s) for s in range(PIECE_POOL)]
    rng = np.random.default_rng(0)
    per_file = round(minutes * 60 / files * SOURCE_RATE)
    paths = []
    for i in range(files):
        path = folder / f"f{i:04d}.wav"
        with sf.SoundFile(path, "w", SOURCE_RATE, 1, subtype="PCM_16", format="WAV") as out:
            written = 0
            while written < per_file:
                piece = pieces[int(rng.integers(PIECE_POOL))][: per_file - written]
                out.write(piece)
                written += piece.size
        paths.append(path)
    return paths


def measure(folder: Path, workers: int, sample_rate: int, segment_seconds: float) -> dict[str, float]:
    """Runs `preprocess_all` on every WAV in `folder`; called in a fresh process."""
    import soundfile as sf

    from rvc_core.intake import SourceFile
    from rvc_core.preprocess import preprocess_all

    # The libraries the workers call, imported before the clock starts: a process pays for them once
    # (scipy.signal alone is ~0.6 CPU-s), not per job, so they are reported apart from the work.
    started = time.perf_counter()
    import scipy.signal  # noqa: F401
    import soxr  # noqa: F401

    import_seconds = time.perf_counter() - started
    paths = sorted(folder.glob("*.wav"))
    sources = [SourceFile(p.stem, p.name, p, 0, p.stat().st_size) for p in paths]
    audio_seconds = sum(sf.info(str(p)).duration for p in paths)
    with tempfile.TemporaryDirectory(dir=folder.parent) as out:
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        stats = preprocess_all(
            sources, sample_rate, segment_seconds, Path(out) / "wav", Path(out) / "wav16k", workers=workers
        )
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
    return {
        "audio_seconds": audio_seconds,
        "import_seconds": import_seconds,
        "wall_seconds": wall,
        "x_real_time": audio_seconds / wall,
        # CPU time of this process and its workers: a figure that other load on the machine
        # does not change; audio seconds per CPU second times the workers bounds x real-time.
        "cpu_seconds": cpu,
        "x_real_time_per_cpu": audio_seconds / cpu,
        "segments": sum(len(s.segments) for s in stats),
        "used_seconds": sum(s.used_seconds for s in stats),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_parent_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="total minutes of audio")
    parser.add_argument("--files", type=int, default=30, help="number of files the audio is split into")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--sample-rate", type=int, default=40000, help="target sample rate in Hz")
    parser.add_argument("--segment-seconds", type=float, default=3.7, help="training segment length")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--measure-folder", type=Path, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    # Run as a script from a checkout: make `rvc_core` importable without installing it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    if args.measure_folder is not None:
        result = measure(args.measure_folder, args.workers, args.sample_rate, args.segment_seconds)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        generate_dataset(data, args.minutes, args.files)
        generated = time.perf_counter() - t0
        command = [
            sys.executable, __file__, "--measure-folder", str(data), "--workers", str(args.workers),
            "--sample-rate", str(args.sample_rate), "--segment-seconds", str(args.segment_seconds),
        ]  # fmt: skip
        child = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(minutes=args.minutes, files=args.files, workers=args.workers, generate_seconds=generated)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        ("files x minutes", f"{args.files} x {args.minutes / args.files:.2f}"),
        ("workers", f"{args.workers}"),
        ("audio seconds", f"{result['audio_seconds']:.1f}"),
        ("library imports (s, apart)", f"{result.get('import_seconds', 0.0):.2f}"),
        ("wall seconds", f"{result['wall_seconds']:.2f}"),
        ("x real-time", f"{result['x_real_time']:.0f}"),
        ("cpu seconds", f"{result['cpu_seconds']:.2f}"),
        ("audio s per cpu s", f"{result['x_real_time_per_cpu']:.0f}"),
        ("segments", f"{result['segments']}"),
        ("peak RSS parent (MiB)", f"{result['peak_rss_parent_mib']:.0f}"),
        ("peak RSS children (MiB)", f"{result['peak_rss_children_mib']:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
