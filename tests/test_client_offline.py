"""The client's parts that need no stack: the terminal bar of a followed job, and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from typing import Any

import pytest

from consumer.client.cli import ctrl_c_flag
from consumer.client.display import JobBar
from consumer.client.follow import Watcher


def test_a_late_progress_event_never_moves_the_bar_back() -> None:
    """Pub/Sub does not keep the order of messages: an earlier stage's event may come last."""
    bar = JobBar("f0d181e6d94a37a9", file=io.StringIO())
    try:
        bar.event(
            "progress", {"status": "running", "stage": "train", "progress": {"epoch": 16, "epochs": 40}}
        )
        bar.event(
            "progress", {"status": "running", "stage": "extract", "progress": {"epoch": 0, "epochs": 40}}
        )
        assert (bar.stage, bar.bar.n) == ("train", 16)
        bar.record({"status": "running", "stage": "export", "progress": {"epoch": 40, "epochs": 40}})
        bar.event(
            "progress", {"status": "running", "stage": "train", "progress": {"epoch": 40, "epochs": 40}}
        )
        assert (bar.stage, bar.bar.n) == ("export", 40)
        bar.event(
            "progress", {"status": "running", "stage": "preview", "progress": {"epoch": 40, "epochs": 40}}
        )
        assert bar.stage == "preview"
    finally:
        bar.close()


def test_ctrl_c_interrupts_and_leaves_a_flag_then_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_flag() as interrupted:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_follower_whose_ctrl_c_was_lost_stops_after_its_next_pull() -> None:
    """Python drops an exception raised inside a finaliser: the flag still ends the following."""
    pulls: list[float] = []

    class QuietSubscription:
        def pull(self, timeout: float) -> list[Any]:
            pulls.append(timeout)
            return []

    interrupted = threading.Event()
    watcher = Watcher(
        "f0d181e6d94a37a9",
        QuietSubscription(),  # type: ignore[arg-type]
        lambda: {"status": "running", "stage": "train"},
        on_record=lambda _record: interrupted.set(),  # the Ctrl-C comes while the job runs
        on_event=lambda _event: None,
    )
    assert watcher.run(stopped=interrupted.is_set) is None
    assert len(pulls) == 1
