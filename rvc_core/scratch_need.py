"""How much scratch space a job needs, and so the longest dataset a given memory can prepare.

Standard library only: the api role reads it (through the settings) without torch or numpy.
The figures are docs/workdir.md's: ≈ 65 MB of scratch per minute of audio (segments at both rates,
features, the extracted files, the index twice), measured with `python -m consumer.work.scratch`;
a fixed part per preset (checkpoints twice while one replaces the other, the exported model three
times), computed from the parameter counts; and the process itself.
"""

from __future__ import annotations

_GIB = 1024**3

SCRATCH_BYTES_PER_AUDIO_MINUTE = 65_000_000
FIXED_SCRATCH_BYTES: dict[str, int] = {"full": 3_200_000_000, "tiny": 80_000_000}
# The process beside its scratch: torch, the CUDA libraries, HuBERT and RMVPE while preparing.
# Assumed for an L4 (not yet measured on a GPU); the tiny preset's is measured on CPU (1.24 GB).
PROCESS_BYTES: dict[str, int] = {"full": 6 * _GIB, "tiny": int(1.5 * _GIB)}
# However small the instance, the limit never falls below this: a smaller one would refuse the
# datasets RVC is made for, and a too-small instance should fail loudly when it runs out.
MIN_AUDIO_MINUTES = 10.0


def max_audio_minutes(memory_bytes: int, preset: str) -> float:
    """The longest dataset, in minutes of audio, whose preparation and training fit `memory_bytes`
    when scratch lives in memory (Cloud Run), never under `MIN_AUDIO_MINUTES`."""
    left = memory_bytes - PROCESS_BYTES[preset] - FIXED_SCRATCH_BYTES[preset]
    return max(left / SCRATCH_BYTES_PER_AUDIO_MINUTE, MIN_AUDIO_MINUTES)
