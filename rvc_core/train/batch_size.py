"""Choosing the batch size from the free accelerator memory.

Estimate: peak memory = fixed + batch × per-item, where
- fixed covers the AdamW moments, the gradients and the kernels' workspace (`train` reads the free
  memory after the networks and the resident dataset are on the GPU, so those are already taken);
- per-item covers one item's activations kept for backward: dominated by the decoder and the
  discriminators on the training window, so it scales with the window's samples (12 800 at 40 kHz).
The figures are conservative estimates, not yet measurements: RVC users report batch 4 fitting
in 6–8 GB and 8–12 in 24 GB with fp16 at 40 kHz, i.e. under ~1 GiB per item beyond ~2 GiB of
models and optimiser state. Replace them with `bench/train.py --device cuda` peaks
(`peak_gpu_mib` at batch 1 and 8: per-item = difference / 7). Only `SAFETY_SHARE` of the free
memory is planned for, since fragmentation and other processes take the rest; a step that still
runs out of memory halves the batch (see `loop.py`).
"""

from __future__ import annotations

from rvc_core.spec import TRAINING_SEGMENT_SAMPLES

CPU_BATCH_SIZE = 4
MAX_BATCH_SIZE = 32
SAFETY_SHARE = 0.8
_GIB = 2**30
REFERENCE_WINDOW = 12800  # samples, the window the per-item figures were measured with

FIXED_BYTES: dict[str, int] = {"full": int(2.0 * _GIB), "tiny": int(0.25 * _GIB)}
PER_ITEM_BYTES: dict[str, int] = {"full": int(1.0 * _GIB), "tiny": int(0.1 * _GIB)}


def batch_size_for_memory(free_bytes: int, version: str, sample_rate: int, preset: str) -> int:
    """The largest batch (1..MAX_BATCH_SIZE) whose estimated peak fits in `free_bytes`."""
    window = TRAINING_SEGMENT_SAMPLES[(version, sample_rate)]
    per_item = PER_ITEM_BYTES[preset] * window / REFERENCE_WINDOW
    room = SAFETY_SHARE * free_bytes - FIXED_BYTES[preset]
    return max(1, min(MAX_BATCH_SIZE, int(room // per_item)))


def choose_batch_size(device: str, version: str, sample_rate: int, preset: str) -> int:
    """4 on CPU; on CUDA, from `torch.cuda.mem_get_info()` with the estimate above."""
    if not device.startswith("cuda"):
        return CPU_BATCH_SIZE
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return batch_size_for_memory(free, version, sample_rate, preset)
