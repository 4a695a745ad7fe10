"""This instance's scratch space: one folder per job under WORK_ROOT, evicted least recently used
first when the folders of jobs this instance no longer runs exceed a byte budget.

On Cloud Run the file system is memory: every byte under WORK_ROOT counts against the instance's
memory limit, beside the process itself. A job's folder only saves downloads (the upload, the work
dir as last synced), so a folder this instance is not running now can always be dropped: the next
slice restores it from the state bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from consumer.logs import log

logger = logging.getLogger(__name__)
USED_MARKER = ".last-used"  # touched at each slice of the job: the LRU order
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # cgroup v2
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
DEFAULT_SHARE = 0.4  # of the instance's memory, when SCRATCH_BUDGET_BYTES is unset


def memory_limit_bytes(
    cgroup_files: tuple[Path, ...] = (CGROUP_MEMORY_MAX, CGROUP_V1_LIMIT),
) -> int:
    """The container's memory limit (cgroup), else the machine's RAM."""
    total = _physical_memory()
    for path in cgroup_files:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < total:
            return int(raw)
    return total


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 1024**3


def default_budget(share: float = DEFAULT_SHARE) -> int:
    return int(memory_limit_bytes() * share)


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class Evicted:
    job_id: str
    bytes: int


class ScratchSpace:
    """Job folders under `root`; `use(job_id)` marks one as running now and evicts others past `budget`."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = Path(root)
        self.budget = budget

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def use(self, job_id: str) -> list[Evicted]:
        """Marks `job_id` as in use now, then evicts other jobs' folders, least recently used first,
        until all folders together fit the budget (the running job's own folder is never evicted)."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / USED_MARKER).touch()
        return self.evict(keep=job_id)

    def evict(self, keep: str | None = None) -> list[Evicted]:
        folders = [p for p in self.root.iterdir() if p.is_dir()] if self.root.exists() else []
        sizes = {p.name: folder_bytes(p) for p in folders}
        total = sum(sizes.values())
        evicted: list[Evicted] = []
        for path in sorted((p for p in folders if p.name != keep), key=_last_used):
            if total <= self.budget:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path.name]
            evicted.append(Evicted(path.name, sizes[path.name]))
        if evicted:
            log(
                logger, logging.INFO, "scratch folders evicted", evicted=[e.job_id for e in evicted],
                freed_bytes=sum(e.bytes for e in evicted), budget=self.budget, kept_bytes=total,
            )  # fmt: skip
        return evicted

    def forget(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


def _last_used(path: Path) -> float:
    try:
        return (path / USED_MARKER).stat().st_mtime
    except OSError:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0


def measure(minutes: float, root: Path, *, seconds_per_file: float = 30.0) -> dict[str, object]:
    """Peak scratch of one job of `minutes` of generated audio on the local stack (the real pipeline,
    tiny preset, CPU, 1 epoch): `python -m consumer.work.scratch MINUTES ROOT` (docs/workdir.md)."""
    import threading
    import time

    from consumer.local.demo import LocalStack
    from rvc_core.testing import DatasetFile, DatasetSpec, build_dataset_zip

    count = max(1, round(minutes * 60 / seconds_per_file))
    files = [DatasetFile(f"voice_{i:03d}.wav", seconds=seconds_per_file, seed=i) for i in range(count)]
    upload = build_dataset_zip(root / "upload" / "voice.zip", DatasetSpec(files))
    scratch = root / "scratch"
    stack = LocalStack(root / "stack", env={"SLICE_SECONDS": "1000", "WORK_ROOT": str(scratch)})
    peak: dict[str, object] = {"bytes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            total = folder_bytes(scratch)
            if total > int(peak["bytes"]):  # type: ignore[call-overload]
                parts = {
                    p.relative_to(job).as_posix(): folder_bytes(p) if p.is_dir() else p.stat().st_size
                    for job in scratch.iterdir()
                    for p in [*job.iterdir(), *(job / "work").glob("*")]
                    if p.name != "work"
                }
                peak.update(bytes=total, parts={k: v for k, v in parts.items() if v > 100_000})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    stack.upload(upload, "datasets/voice.zip", {"epochs": "1", "model-name": "voice"})
    stack.run(timeout=None)
    done.set()
    sampler.join()
    return {
        "audio_minutes": count * seconds_per_file / 60,
        "zip_bytes": upload.stat().st_size,
        "peak_scratch_bytes": peak["bytes"],
        "at_peak": peak.get("parts", {}),
        "finals": [f.kind for f in stack.finals()],
        "seconds": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(float(sys.argv[1]), Path(sys.argv[2])), indent=1))
