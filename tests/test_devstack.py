"""`python -m consumer dev`: the local stack, driven the way a user drives it, with the real gcloud CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

from rvc_core.testing import simple_dataset_zip

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.emulator


@dataclass
class RunningDevStack:
    process: subprocess.Popen[bytes]
    env_file: Path
    env: dict[str, str]  # the KEY=VALUE lines it wrote
    stderr: Path

    def gcloud(self, *args: str, config_dir: Path) -> str:
        env = {
            **os.environ,
            **self.env,
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        }
        done = subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def interrupt(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def start_dev_stack(tmp_path: Path) -> RunningDevStack:
    env_file = tmp_path / "dev.env"
    stderr = tmp_path / "dev.stderr"
    with open(tmp_path / "dev.stdout", "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "dev", "--env-file", str(env_file)],
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # its logs and scratch stay in the test's folder
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 150
    while not env_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the dev stack did not start:\n{stderr.read_text()[-3000:]}")
        time.sleep(0.2)
    return RunningDevStack(process, env_file, read_env_file(env_file), stderr)


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDevStack]:
    stack = start_dev_stack(tmp_path_factory.mktemp("devstack"))
    try:
        yield stack
    finally:
        if stack.process.poll() is None:
            try:
                stack.interrupt()
            except subprocess.TimeoutExpired:
                os.killpg(stack.process.pid, signal.SIGKILL)
                stack.process.wait()


def port_is_open(url_or_host: str) -> bool:
    parts = urlsplit(url_or_host if "//" in url_or_host else f"//{url_or_host}")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname or "", parts.port or 0)) == 0


def pull_until(stack: RunningDevStack, config_dir: Path, wanted: str, timeout: float = 40.0) -> list[dict]:
    """Pulls the results subscription with gcloud until an event of type `…wanted` arrives."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = stack.gcloud(
            "pubsub", "subscriptions", "pull", stack.env["RESULTS_SUBSCRIPTION"],
            "--auto-ack", "--limit=20", "--format=json", config_dir=config_dir,
        )  # fmt: skip
        seen += [entry["message"] for entry in json.loads(out or "[]")]
        if any(m["attributes"].get("ce-type", "").endswith(wanted) for m in seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"no {wanted} event within {timeout} s; got {[m['attributes'] for m in seen]}")


def test_env_file_names_everything_a_user_needs_on_loopback(dev_stack: RunningDevStack) -> None:
    env = dev_stack.env
    required = {
        "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB", "CLOUDSDK_AUTH_DISABLE_CREDENTIALS",
        "CLOUDSDK_CORE_PROJECT", "INBOX_URL", "RESULTS_SUBSCRIPTION", "SERVICE_URL", "MODELS_URL",
    }  # fmt: skip
    assert required <= env.keys()
    assert env["CLOUDSDK_AUTH_DISABLE_CREDENTIALS"] == "true"
    assert env["INBOX_URL"] == "gs://inbox/datasets/"
    for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "SERVICE_URL"):
        assert "127.0.0.1:" in env[key] and port_is_open(env[key])
    with urlopen(f"{env['SERVICE_URL']}/healthz", timeout=5) as response:
        assert response.status == 200


def test_gcloud_upload_to_the_inbox_becomes_a_job_at_the_service(
    dev_stack: RunningDevStack, tmp_path: Path
) -> None:
    voice = simple_dataset_zip(tmp_path / "voice.zip", files=1, seconds=2.0)
    config_dir = tmp_path / "gcloud-config"
    metadata = "--custom-metadata=model-name=alice,epochs=1"
    dev_stack.gcloud("storage", "cp", metadata, str(voice), dev_stack.env["INBOX_URL"], config_dir=config_dir)

    events = pull_until(dev_stack, config_dir, ".accepted")
    [accepted] = [m for m in events if m["attributes"]["ce-type"].endswith(".accepted")]
    assert accepted["attributes"]["model_name"] == "alice"
    data = json.loads(base64.b64decode(accepted["data"]))
    uploaded = f"{dev_stack.env['INBOX_URL']}voice.zip"
    described = json.loads(
        dev_stack.gcloud("storage", "objects", "describe", uploaded, "--format=json", config_dir=config_dir)
    )
    assert int(data["source"]["generation"]) == int(described["generation"])
    with urlopen(
        f"{dev_stack.env['SERVICE_URL']}/jobs/{accepted['attributes']['job_id']}", timeout=5
    ) as response:
        record = json.loads(response.read())
    assert (record["model_name"], record["spec"]["epochs"]) == ("alice", 1)


def test_interrupt_stops_everything_it_started(tmp_path: Path) -> None:
    stack = start_dev_stack(tmp_path)
    try:
        endpoints = [stack.env[k] for k in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "SERVICE_URL")]
        assert all(port_is_open(e) for e in endpoints)
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGKILL)
    assert not any(port_is_open(e) for e in endpoints)
    assert not stack.env_file.exists()  # no stale file pointing at servers that are gone
