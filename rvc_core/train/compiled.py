"""`torch.compile` for the training step: when it is used, and how shapes are kept few.

The networks are compiled in place (`nn.Module.compile`), so parameter names, `state_dict()`, the
checkpoint format and the exported file are unchanged. Random ops keep eager semantics
(`fallback_random`): the random window, the posterior noise and the NSF noise draw from the same
generator as in eager mode, so a compiled run resumes exactly and a compiled step can be checked
against the eager one on the same batch.

Shapes: the discriminators always see [B or 2B, 1, window] and the decoder a fixed window; only the
generator's frame axis varies, with the longest item of a batch. `LENGTH_MULTIPLE` rounds it up
(padding is masked), so a dataset yields a handful of shapes rather than one per distinct length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rvc_core.train.step import Trainee

LENGTH_MULTIPLE = 64  # frames (0.64 s): pad each compiled batch's frame axis up to a multiple of this
# Graphs kept per code object before torch falls back to eager. The 8 period discriminators share
# one `forward`, each seen with grad (2B, B) and without (B): 24 graphs before any length bucket.
RECOMPILE_LIMIT = 64


def compile_wins(device: str) -> bool:
    """The `compile=None` default: whether compiling pays off on `device`.

    CPU: measured to lose (tiny preset: 3.5 steps/s compiled against 5.6-5.9 eager, after a 200 s
    first step); 88 % of the full step is oneDNN convolutions, which inductor calls unchanged. CUDA:
    not measured yet (scripts/gpu_check.sh runs it), so it stays eager too. See docs/performance.md.
    """
    return False


def compile_trainee(trainee: Trainee) -> None:
    """Compiles the generator and each sub-discriminator in place (the step calls them directly)."""
    import torch
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    trainee.generator.compile()
    for discriminator in trainee.discriminator.discriminators:
        discriminator.compile()


def compile_counters() -> dict[str, int]:
    """Graphs compiled and recompiles so far in this process (for benchmarks and tests)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "recompiles": sum(int(v) for v in counters["recompiles"].values()),
    }
