"""Progress of a running slice: `progress` results at each stage and every N epochs, and the record's
`progress.history`: one `{"epoch", "losses"}` per finished epoch (the last HISTORY_EPOCHS), for the
job page's loss curves while the job runs. Events never carry the history (`results.event_progress`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from consumer.jobs.records import JobRecord
from consumer.jobs.results import Results
from consumer.logs import log
from consumer.work.lease import LeaseKeeper
from consumer.work.timings import Stopwatch

if TYPE_CHECKING:
    from rvc_core.progress import ProgressEvent

logger = logging.getLogger(__name__)
HISTORY_EPOCHS = 200  # entries kept in the record's progress.history


class ProgressReporter:
    """rvc_core's progress callback: publishes `progress` results at each new stage and every N epochs,
    and hands the latest numbers to the lease keeper so `GET /jobs/<id>` shows them."""

    def __init__(
        self,
        results: Results,
        record: JobRecord,
        keeper: LeaseKeeper,
        every_epochs: int,
        watch: Stopwatch | None = None,
        *,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.results = results
        self.record = record
        self.keeper = keeper
        self.every_epochs = every_epochs
        self.watch = watch or Stopwatch()
        self._last: tuple[str, int | None] | None = None
        self.history: list[dict[str, Any]] = list(history or [])  # replaced, never changed in place

    def __call__(self, event: ProgressEvent) -> None:
        if epoch_finished(event):
            self.history = appended(self.history, int(event.epoch or 0), event.losses)
        snapshot = with_history({**progress_numbers(event), "message": event.message}, self.history)
        self.keeper.note_progress(event.stage, snapshot)
        if not self._worth_publishing(event):
            return
        self._last = (event.stage, event.epoch)
        self.record.stage = event.stage
        self.record.progress = snapshot
        try:
            with self.watch.part("progress"):
                self.results.publish("progress", self.record, extra_id=f"{event.stage}.{event.epoch or 0}")
        except Exception as err:  # progress is informative; a failed publish must not stop training
            log(
                logger, logging.WARNING, "progress publish failed", job_id=self.record.job_id, error=repr(err)
            )

    def _worth_publishing(self, event: ProgressEvent) -> bool:
        if self._last is None or self._last[0] != event.stage:
            return True
        if event.epoch is None or event.epoch == self._last[1]:
            return False
        return event.epoch % self.every_epochs == 0 or event.epoch == event.epochs


def progress_numbers(progress: Any) -> dict[str, Any]:
    """The numbers of a `ProgressEvent` or a `JobProgress`, as the record's `progress` keeps them."""
    return {
        "stage": progress.stage,
        "epoch": progress.epoch,
        "epochs": progress.epochs,
        "step": progress.step,
        "losses": dict(progress.losses),
        "eta_seconds": progress.eta_seconds,
    }


def epoch_finished(event: ProgressEvent) -> bool:
    """rvc_core's end-of-epoch report: `epoch N done`, with the epoch's mean losses and the
    validation mel (its reports inside an epoch carry the interval's losses and no validation)."""
    if event.stage != "train" or not event.epoch or not event.losses:
        return False
    return event.message == f"epoch {event.epoch} done" or "validation_mel" in event.losses


def appended(history: list[dict[str, Any]], epoch: int, losses: dict[str, float]) -> list[dict[str, Any]]:
    """A new list: `history` without entries of `epoch` or later (a slice that resumed from an earlier
    checkpoint trains them again), then this epoch's entry, the last HISTORY_EPOCHS kept."""
    kept = [h for h in history if isinstance(h.get("epoch"), int) and h["epoch"] < epoch]
    return [*kept, {"epoch": epoch, "losses": dict(losses)}][-HISTORY_EPOCHS:]


def with_history(numbers: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's progress: the latest numbers, and the per-epoch history when there is one."""
    return {**numbers, "history": history} if history else numbers
