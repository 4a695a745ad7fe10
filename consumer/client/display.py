"""What a followed job looks like on the terminal: a tqdm bar (stage, epoch/epochs, losses, queue
position while queued, ETA) with event lines above it; and one-line summaries of job records."""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

from rvc_core.layout import JOB_STAGES

BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} epochs |{bar}| "
# The order a job's stages run in: Pub/Sub does not keep the order of messages, so an event that
# places the job before where the bar already is arrived late.
STAGE_ORDER = ("queued", *JOB_STAGES, "done")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def losses_text(losses: dict[str, Any] | None) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in (losses or {}).items()
    )


def state_text(status: str, stage: str | None, progress: dict[str, Any], queue: dict[str, Any] | None) -> str:
    """What follows the bar: the queue position while queued, else losses and the ETA."""
    parts = []
    if status == "queued":
        if queue and queue.get("position") is not None:
            parts.append(f"queue position {queue['position']}")
            if queue.get("estimated_start_seconds") is not None:
                parts.append(f"starts in ~{duration(queue['estimated_start_seconds'])}")
        else:
            parts.append("queued")
    else:
        if progress.get("losses"):
            parts.append(losses_text(progress["losses"]))
        if progress.get("eta_seconds") is not None:
            parts.append(f"ETA {duration(progress['eta_seconds'])}")
    return ", ".join(parts)


class JobBar:
    """The bar of one job, fed with job records and result events."""

    def __init__(self, job_id: str, *, file: IO[str] | None = None) -> None:
        self.job_id = job_id
        self.status = "queued"
        self.stage = "queued"
        self.progress: dict[str, Any] = {}
        self.queue: dict[str, Any] | None = None
        self.bar = tqdm(
            total=None, desc=f"{job_id} queued", bar_format=BAR_FORMAT, file=file or sys.stderr,
            dynamic_ncols=True, leave=True, mininterval=0,
        )  # fmt: skip

    def record(self, record: dict[str, Any]) -> None:
        self.status = str(record.get("status") or self.status)
        self._advance(record.get("stage"), record.get("progress") or {})
        self.queue = record.get("queue")
        self._draw()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.status = str(data.get("status") or self.status)
        if kind == "accepted":
            self.note(
                f"accepted: {data.get('model_name', '')}, {data.get('spec', {}).get('epochs', '?')} epochs"
            )
            unknown = data.get("unknown_metadata_keys") or []
            if unknown:
                self.note(f"unknown metadata keys (ignored): {', '.join(unknown)}")
        if kind == "progress":
            self._advance(data.get("stage"), data.get("progress") or {})
        if self.status != "queued":
            self.queue = None
        self._draw()

    def _advance(self, stage: str | None, progress: dict[str, Any]) -> None:
        """Takes the stage and numbers unless they are behind the bar's (a late message)."""
        stage = str(stage or self.stage)
        if self._position(stage, progress) < self._position(self.stage, self.progress):
            return
        self.stage = stage
        self.progress = {**self.progress, **progress}

    def _position(self, stage: str, progress: dict[str, Any]) -> tuple[int, int]:
        known = stage if stage in STAGE_ORDER else self.stage  # a stage we do not know: keep up
        rank = STAGE_ORDER.index(known) if known in STAGE_ORDER else 0
        return int(progress.get("epoch") or 0), rank

    def _draw(self) -> None:
        epochs = self.progress.get("epochs")
        if epochs:
            self.bar.total = int(epochs)
        self.bar.n = int(self.progress.get("epoch") or 0)
        self.bar.set_description_str(f"{self.job_id} {self.stage}", refresh=False)
        self.bar.set_postfix_str(
            state_text(self.status, self.stage, self.progress, self.queue), refresh=False
        )
        self.bar.refresh()

    def note(self, text: str) -> None:
        self.bar.write(text, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


def summary(record: dict[str, Any]) -> str:
    """One line per job for `list`."""
    progress = record.get("progress") or {}
    epochs = (
        f"{progress.get('epoch', 0)}/{progress.get('epochs') or record.get('spec', {}).get('epochs', '?')}"
    )
    return "  ".join(
        [
            str(record.get("job_id", "")),
            f"{record.get('model_name', '')!s:<20}",
            f"{record.get('status', '')!s:<10}",
            f"{record.get('stage', '')!s:<9}",
            f"{epochs:>9}",
            str(record.get("created_at", "")),
        ]
    )


def details(record: dict[str, Any]) -> str:
    """Several lines for `status`."""
    progress = record.get("progress") or {}
    lines = [
        f"job       {record.get('job_id')}",
        f"model     {record.get('model_name')}",
        f"status    {record.get('status')} (stage {record.get('stage')})",
        f"source    {(record.get('source') or {}).get('uri', '')}",
    ]
    if progress:
        lines.append(f"epoch     {progress.get('epoch', 0)}/{progress.get('epochs', '?')}")
        if progress.get("losses"):
            lines.append(f"losses    {losses_text(progress['losses'])}")
        if progress.get("eta_seconds") is not None and record.get("status") == "running":
            lines.append(f"ETA       {duration(progress['eta_seconds'])}")
    queue = record.get("queue")
    if record.get("status") == "queued" and queue:
        start = duration(queue.get("estimated_start_seconds"))
        lines.append(f"queue     position {queue.get('position')}, starts in ~{start}")
    error = record.get("error")
    if error:
        lines.append(f"error     {error.get('code')}: {error.get('message')}")
    for kind, uri in sorted((record.get("artifacts") or {}).items()):
        lines.append(f"artifact  {kind}: {uri}")
    lines.append(f"updated   {record.get('updated_at', '')}")
    return "\n".join(lines)
