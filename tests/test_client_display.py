"""The client's terminal display of a followed job (`consumer/client/display.py`)."""

from __future__ import annotations

import io

from consumer.client.display import JobBar


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
