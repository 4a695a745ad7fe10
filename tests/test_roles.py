"""One codebase, three roles: what each serves, the settings checked before start, and an api that
never loads torch (its image has none)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from consumer.adapters.messaging.local_bus import LocalBus
from consumer.app import create_app
from consumer.errors import SettingsError
from consumer.services import build_services
from consumer.settings import Settings
from tests.factories_consumer import FakeTrainer

REPO = Path(__file__).resolve().parents[1]


def local_env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "STATE_BUCKET": f"file://{root}/state",
        "MODELS_BUCKET": f"file://{root}/models",
        "MESSAGING": "local",
        **extra,
    }


@pytest.mark.parametrize(
    ("role", "served", "absent"),
    [
        ("all", ["/events", "/train", "/jobs/0123456789abcdef", "/work", "/healthz"], []),
        ("api", ["/events", "/train", "/jobs/0123456789abcdef", "/healthz"], ["/work"]),
        ("worker", ["/work", "/healthz"], ["/events", "/train", "/jobs/0123456789abcdef"]),
    ],
)
def test_each_role_serves_its_endpoints_only(
    tmp_path: Path, role: str, served: list[str], absent: list[str]
) -> None:
    settings = Settings.from_env(local_env(tmp_path, SERVICE_ROLE=role))
    services = build_services(settings, publisher=LocalBus(project="local"), trainer=FakeTrainer())
    client = create_app(services, handle_sigterm=False).test_client()
    for path in served:
        method = client.get if path.startswith(("/jobs", "/healthz")) else client.post
        assert method(path).status_code != 404 or path.startswith("/jobs"), path
    for path in absent:
        method = client.get if path.startswith("/jobs") else client.post
        assert method(path).status_code == 404, path
    assert (services.slices is None) == (role == "api")
    assert (services.intake is None) == (role == "worker")


def test_slice_budget_is_derived_from_the_dispatch_deadline(tmp_path: Path) -> None:
    assert Settings.from_env(local_env(tmp_path)).slice_seconds == 1500  # 1800 less 300 s reserved
    assert Settings.from_env(local_env(tmp_path, DISPATCH_DEADLINE_SECONDS="600")).slice_seconds == 450
    assert Settings.from_env(local_env(tmp_path, SLICE_SECONDS="30")).slice_seconds == 30
    with pytest.raises(SettingsError, match="SLICE_SECONDS=1700"):
        Settings.from_env(local_env(tmp_path, SLICE_SECONDS="1700"))
    with pytest.raises(SettingsError, match="DISPATCH_DEADLINE_SECONDS"):
        Settings.from_env(local_env(tmp_path, DISPATCH_DEADLINE_SECONDS="3600"))


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("on", True), ("off", False)])
def test_train_compile_reaches_the_trainer(tmp_path: Path, value: str | None, expected: bool | None) -> None:
    from consumer.local.demo import LocalStack
    from rvc_core.testing import simple_dataset_zip
    from tests.factories_consumer import FakeTrainer

    trainer = FakeTrainer(epochs_per_call=1)
    env = {"SLICE_SECONDS": "60"} | ({"TRAIN_COMPILE": value} if value else {})
    stack = LocalStack(tmp_path / "stack", env=env, trainer=trainer)
    stack.upload(
        simple_dataset_zip(tmp_path / "alice.zip", files=2, seconds=1.0),
        "datasets/alice.zip",
        {"epochs": "1"},
    )
    stack.run(timeout=60)
    assert trainer.calls and all(c.env is not None and c.env.compile is expected for c in trainer.calls)


def test_a_bad_train_compile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TRAIN_COMPILE"):
        Settings.from_env(local_env(tmp_path, TRAIN_COMPILE="sometimes"))


def test_cloud_settings_need_a_queue_and_a_work_url() -> None:
    cloud = {"STATE_BUCKET": "gs://s", "MODELS_BUCKET": "gs://m", "GOOGLE_CLOUD_PROJECT": "p"}
    with pytest.raises(SettingsError, match="TASK_QUEUE is required"):
        Settings.from_env(cloud)
    queue = "projects/p/locations/us-central1/queues/rvc-work"
    with pytest.raises(SettingsError, match="WORK_URL is required"):
        Settings.from_env({**cloud, "TASK_QUEUE": queue})
    with pytest.raises(SettingsError, match="TASK_QUEUE"):
        Settings.from_env({**cloud, "TASK_QUEUE": "rvc-work", "WORK_URL": "https://w.run.app/work"})
    settings = Settings.from_env({**cloud, "TASK_QUEUE": queue, "WORK_URL": "https://w.run.app/work"})
    assert settings.task_queue_url == queue


def test_serve_refuses_a_bad_role_before_starting(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "consumer", "serve", "--role", "gpu"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**local_env(tmp_path), "PATH": ""},
    )  # fmt: skip
    assert run.returncode == 2 and "--role" in run.stderr


API_WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoHeavyModules(importlib.abc.MetaPathFinder):
        # The api image installs neither: importing one fails there, so it fails here.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchaudio", "numpy", "librosa", "faiss"}:
                raise ImportError(f"{name} is not in the api image")
            return None

    sys.meta_path.insert(0, NoHeavyModules())
    root, dataset = sys.argv[1], sys.argv[2]
    from consumer.adapters.messaging.local_bus import LocalBus
    from consumer.adapters.storage import open_store
    from consumer.app import create_app
    from consumer.services import build_services
    from consumer.settings import Settings

    settings = Settings.from_env({
        "STATE_BUCKET": f"file://{root}/state", "MODELS_BUCKET": f"file://{root}/models",
        "MESSAGING": "local", "SERVICE_ROLE": "api",
    })
    client = create_app(build_services(settings, publisher=LocalBus(project="local")),
                        handle_sigterm=False).test_client()
    inbox = open_store(f"file://{root}/inbox")
    inbox.upload_file(__import__("pathlib").Path(dataset), f"file://{root}/inbox/datasets/a.zip",
                      content_type="application/zip", metadata={"model-name": "alice"})
    info = inbox.stat(f"file://{root}/inbox/datasets/a.zip")
    event = {"bucket": "inbox", "name": "datasets/a.zip", "generation": str(info.generation),
             "metadata": info.metadata}
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "google.cloud.storage.object.v1.finalized",
               "ce-source": "//storage.googleapis.com/projects/_/buckets/inbox"}
    accepted = client.post("/events", json=event, headers=headers).get_json()
    status = client.get(f"/jobs/{accepted['job_id']}").get_json()
    print(json.dumps({"accepted": accepted, "status": status["status"], "queue": status.get("queue")}))
    """
)


def test_api_role_takes_an_upload_without_torch_or_numpy(tmp_path: Path) -> None:
    dataset = tmp_path / "a.zip"
    dataset.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # intake never opens the zip: the worker does
    run = subprocess.run(
        [sys.executable, "-c", API_WITHOUT_TORCH, str(tmp_path), str(dataset)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["accepted"]["outcome"] == "accepted"
    assert answer["status"] == "queued"
    assert answer["queue"]["position"] == 1
    assert (tmp_path / "tasks" / "pending" / f"{answer['accepted']['job_id']}-0.json").exists()
