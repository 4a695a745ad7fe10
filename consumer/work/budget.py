"""How long `run_job` may work in one slice, so that the slice still answers within the queue's
dispatch deadline: SLICE_SECONDS, shrunk when measurements say its static reserve is too small."""

from __future__ import annotations

import os
from collections import deque

from consumer.work.timings import Stopwatch

# The parts of a slice (consumer.work.slices.SLICE_PARTS) that come after `run_job` returns: its
# work budget must leave room for them.
AFTER_WORK_PARTS = ("sync", "queue_next", "advance", "artifacts", "finalise")
MEASURED_SLICES = 5  # the reserve follows the slowest of this many recent slices
MIN_WORK_SECONDS = 1.0


COLD_START_WINDOW = 60.0  # a first delivery this soon after start-up most likely caused the start


class SliceBudget:
    """How long `run_job` may work in one slice. SLICE_SECONDS (the dispatch deadline less a static
    reserve) unless measurements say the reserve is too small: this instance's start-up (which
    passed inside the deadline of the delivery that started it) and the slowest recent upload
    after the work."""

    def __init__(self, slice_seconds: float, dispatch_deadline: float, ready_at: float) -> None:
        self.slice_seconds = slice_seconds
        self.dispatch_deadline = dispatch_deadline
        self.ready_at = ready_at  # monotonic time this runner was built
        self.startup_seconds = process_age_seconds()  # from the process's start to ready
        self.first = True
        self.after_work: deque[float] = deque(maxlen=MEASURED_SLICES)

    def work_seconds(self, received: float) -> float:
        cold = self.first and received - self.ready_at < COLD_START_WINDOW
        startup = self.startup_seconds + (received - self.ready_at) if cold else 0.0
        self.first = False
        measured = startup + max(self.after_work, default=0.0)
        margin = 0.05 * self.dispatch_deadline  # the answer's way back, clock skew
        return max(MIN_WORK_SECONDS, min(self.slice_seconds, self.dispatch_deadline - measured - margin))

    def record(self, watch: Stopwatch) -> None:
        self.after_work.append(sum(watch.seconds(part) for part in AFTER_WORK_PARTS))


def process_age_seconds() -> float:
    """Seconds since this process started (Linux /proc); 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return max(0.0, float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
