"""`python -m consumer demo`: one training job end to end with nothing from Google.

Buckets are folders (`file://`), Pub/Sub is the in-process local bus, the work queue is the
folder-backed local task queue, training is rvc_core's tiny preset on CPU with random-initialised
networks. The finalize notification goes through the bus to the real `/events` handler, work tasks
through the local dispatcher to the real `/work` handler, and the results are printed.

`LocalStack` is that wiring on its own, reused by the tests with a fake trainer.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from consumer.adapters.messaging import PushRequest
    from consumer.adapters.messaging.local_bus import LocalBus
    from consumer.adapters.storage import ObjectInfo
    from consumer.adapters.tasks.local import LocalTask
    from consumer.jobs.results import ReceivedResult
    from consumer.services import Services
    from consumer.work.slices import Trainer

INBOX_BUCKET = "inbox"
INTAKE_TOPIC = "rvc-intake"
DEMO_FOLDERS = ("inbox", "state", "models", "scratch", "upload")


class LocalStack:
    """`root/{inbox,state,models}` as buckets, the local bus with push subscriptions to the real
    handlers (through Flask's test client), the local task queue (`root/tasks`) dispatching to
    `/work` with `slots` concurrent deliveries, and every result collected in `results`."""

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str] | None = None,
        trainer: Trainer | None = None,
        bus: LocalBus | None = None,
        on_result: Callable[[ReceivedResult], None] | None = None,
        slots: int = 1,
    ) -> None:
        from consumer.adapters.messaging.local_bus import LocalBus
        from consumer.adapters.storage import open_store
        from consumer.adapters.tasks.local import LocalDispatcher, LocalTaskQueue
        from consumer.app import create_app
        from consumer.services import build_services
        from consumer.settings import Settings

        self.root = Path(root).resolve()
        defaults = {
            "STATE_BUCKET": f"file://{self.root / 'state'}",
            "MODELS_BUCKET": f"file://{self.root / 'models'}",
            "MESSAGING": "local",
            "WORK_ROOT": str(self.root / "scratch"),
            "TRAIN_PRESET": "tiny",
            "RVC_ASSETS": "none",
            "RVC_PRETRAINED": "none",
            "DEVICE": "cpu",
            "TASK_QUEUE": f"file://{self.root / 'tasks'}",
            "WORKER_SLOTS": str(slots),
        }
        for folder in ("inbox", "state", "models"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.settings = Settings.from_env({**defaults, **(env or {})})
        self.bus = bus or LocalBus(project=self.settings.project, min_backoff=0.02, max_backoff=0.5)
        self.tasks = LocalTaskQueue(self.root / "tasks")
        self.services: Services = build_services(
            self.settings, publisher=self.bus, trainer=trainer, tasks=self.tasks
        )
        self.client: FlaskClient = create_app(self.services, handle_sigterm=False).test_client()
        self.inbox = open_store(f"file://{self.root / INBOX_BUCKET}")
        self.results: list[ReceivedResult] = []
        self.on_result = on_result
        self.statuses: dict[str, list[int]] = {"/events": [], "/work": []}
        self.work_answers: list[dict[str, Any]] = []  # /work's JSON answers, timings included
        self.bus.subscribe(INTAKE_TOPIC, lambda req: self._push("/events", req), name="rvc-intake-push")
        self.dispatcher = LocalDispatcher(
            self.tasks, self._work, max_concurrent=slots, min_backoff=0.02, max_backoff=0.5
        )
        self.bus.subscribe(self.settings.results_topic, self._collect, name="rvc-results-collect")

    def _push(self, path: str, request: PushRequest) -> int:
        response = self.client.post(path, data=request.body, headers=request.headers)
        self.statuses[path].append(response.status_code)
        return response.status_code

    def _work(self, task: LocalTask) -> int:
        response = self.client.post("/work", data=task.body_bytes, headers=task.headers)
        self.statuses["/work"].append(response.status_code)
        self.work_answers.append(response.get_json())
        return response.status_code

    def _collect(self, request: PushRequest) -> int:
        from consumer.jobs.results import read_result

        message = json.loads(request.body)["message"]
        result = read_result(base64.b64decode(message.get("data", "")), message.get("attributes", {}))
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)
        return 204

    def upload(self, zip_path: Path, name: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Puts a file into the inbox bucket and publishes its finalize notification (JSON_API_V1)."""
        uri = self.settings.object_url(INBOX_BUCKET, name)
        self.inbox.upload_file(
            Path(zip_path), uri, content_type="application/zip", metadata=dict(metadata or {})
        )
        info = self.inbox.stat(uri)
        assert info is not None
        self.notify(info, name)
        return info

    def notify(self, info: ObjectInfo, name: str) -> None:
        resource = {
            "kind": "storage#object",
            "bucket": INBOX_BUCKET,
            "name": name,
            "generation": str(info.generation),
            "size": str(info.size),
            "contentType": info.content_type,
            "metadata": info.metadata,
        }
        attributes = {
            "bucketId": INBOX_BUCKET,
            "objectId": name,
            "objectGeneration": str(info.generation),
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
        }
        self.bus.publish(INTAKE_TOPIC, json.dumps(resource).encode(), attributes)

    def run(self, timeout: float | None = 600.0) -> int:
        """Delivers messages and tasks until none is left; returns the tasks dispatched."""
        started = time.monotonic()

        def left() -> float | None:
            return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

        while True:
            self.bus.run_until_idle(timeout=left())
            dispatched = self.dispatcher.step()
            if self.dispatcher.idle() and self.bus.pending() == 0:
                return self.dispatcher.dispatched
            if timeout is not None and not left():
                raise TimeoutError(f"still {self.tasks.waiting()} tasks queued after {timeout} s")
            if not dispatched:
                time.sleep(0.005)

    def finals(self, job_id: str | None = None) -> list[ReceivedResult]:
        from consumer.jobs.results import FINAL_KINDS

        return [
            r
            for r in self.results
            if r.kind in FINAL_KINDS and (job_id is None or r.data["job_id"] == job_id)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the buckets")
    parser.add_argument("--epochs", type=int, default=4, help="epochs to train")
    parser.add_argument("--slice-seconds", type=float, default=3.0, help="training time per work slice, s")
    args = parser.parse_args(argv)

    import logging

    from tqdm import tqdm

    from consumer.logs import configure_logging
    from rvc_core.testing import simple_dataset_zip

    configure_logging(json_lines=False, level="WARNING")
    logging.getLogger("consumer").setLevel(logging.WARNING)
    for folder in DEMO_FOLDERS:  # a fresh run; nothing else under --out is touched
        shutil.rmtree(args.out / folder, ignore_errors=True)
    bars: dict[str, Any] = {}

    def show(result: ReceivedResult) -> None:
        progress = result.data.get("progress") or {}
        stage = progress.get("stage")
        if result.kind == "accepted":
            tqdm.write(f"accepted: job {result.data['job_id']} for model {result.data['model_name']}")
        elif result.kind == "progress" and stage == "train" and progress.get("epochs"):
            if "train" not in bars:
                bars["train"] = tqdm(total=progress["epochs"], desc="training", unit="epoch")
            bars["train"].update(max(0, int(progress.get("epoch") or 0) - bars["train"].n))
        elif result.kind == "progress":
            if "train" in bars:
                bars.pop("train").close()
            tqdm.write(f"stage: {stage}")

    stack = LocalStack(
        args.out,
        env={"SLICE_SECONDS": str(args.slice_seconds), "PROGRESS_EVERY_EPOCHS": "1"},
        on_result=show,
    )
    dataset = simple_dataset_zip(args.out / "upload" / "demo.zip", files=3, seconds=6.0)
    print(f"uploading {dataset} to {stack.settings.object_url(INBOX_BUCKET, 'datasets/demo.zip')}")
    stack.upload(dataset, "datasets/demo.zip", {"model-name": "demo", "epochs": str(args.epochs)})
    stack.run(timeout=3600)
    for bar in bars.values():
        bar.close()
    finals = stack.finals()
    if len(finals) != 1:
        print(f"error: expected one final result, got {len(finals)}", file=sys.stderr)
        return 1
    final = finals[0]
    print(json.dumps({"attributes": final.attributes, "data": final.data}, indent=2, sort_keys=True))
    if final.kind != "succeeded":
        print(f"error: {final.data['error']['code']}: {final.data['error']['message']}", file=sys.stderr)
        return 1
    print(f"model: {final.data['artifacts'].get('pth')}")
    return 0
