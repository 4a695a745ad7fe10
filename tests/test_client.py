"""`rvc-trainer` (consumer.client) against the dev stack on the emulators, run as a user runs it:
a subprocess reading the dev stack's env file. The stand-in trainer keeps these quick; one test
trains the tiny preset for real and loads the downloaded .pth with torch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumer.adapters.messaging.admin import pull, subscriber_admin
from consumer.local.devstack import DevStack, DevStackConfig, write_env_file
from rvc_core.testing import simple_dataset_zip
from tests.emulators import FAKE_SERVICE_COMMAND

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.emulator

FAKE_ENV = {
    "SLICE_SECONDS": "60", "PROGRESS_EVERY_EPOCHS": "1", "DEVICE": "cpu",
    "FAKE_SECONDS_PER_EPOCH": "0.3",
}  # fmt: skip


@dataclass
class Stack:
    dev: DevStack
    env_file: Path

    @property
    def project(self) -> str:
        return self.dev.config.project

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            client_command(*args, "--env-file", str(self.env_file)),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            client_command(*args, "--env-file", str(self.env_file)),
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def shared_results(self) -> dict[str, set[str]]:
        """Every result on the dev stack's own results subscription, `ce-id`s by job: what another
        reader of the topic received."""
        by_job: dict[str, set[str]] = {}
        host = self.dev.env["PUBSUB_EMULATOR_HOST"]
        while batch := pull(
            self.project, self.dev.config.results_subscription, emulator_host=host, timeout=3
        ):
            for m in batch:
                by_job.setdefault(m.attributes["job_id"], set()).add(m.attributes["ce-id"])
        return by_job

    def follow_subscriptions(self) -> list[str]:
        client = subscriber_admin(self.dev.env["PUBSUB_EMULATOR_HOST"])
        try:
            subs = client.list_subscriptions(request={"project": f"projects/{self.project}"}, timeout=10)
            return [s.name for s in subs if "/rvc-trainer-follow-" in s.name]
        finally:
            client.transport.close()


def client_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "consumer.client", *args]


def start_stack(log_dir: Path, **config: object) -> Iterator[Stack]:
    dev = DevStack(DevStackConfig(service_log=True, dispatch_deadline_seconds=120, **config), log_dir=log_dir)
    env = dev.start()
    env_file = log_dir / "dev.env"
    write_env_file(env_file, env)
    try:
        yield Stack(dev, env_file)
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The dev stack with the stand-in trainer (0.3 s an epoch, a progress event each epoch)."""
    yield from start_stack(
        tmp_path_factory.mktemp("client-stack"), service_command=FAKE_SERVICE_COMMAND, service_env=FAKE_ENV
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simple_dataset_zip(tmp_path_factory.mktemp("client-data") / "voice.zip", files=2, seconds=4.0)


def copy_as(dataset: Path, path: Path) -> Path:
    path.write_bytes(dataset.read_bytes())
    return path


def events_of(stdout: str) -> tuple[str, list[dict[str, object]]]:
    """`submit --wait --json`'s stdout: the job id, then one JSON line per event."""
    lines = stdout.splitlines()
    return lines[0], [json.loads(line) for line in lines[1:] if line.startswith("{")]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "rvc-trainer"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "submit" in done.stdout and "watch" in done.stdout


def test_submit_wait_follows_to_success_then_status_list_download(
    stack: Stack, dataset: Path, tmp_path: Path
) -> None:
    zip_path = copy_as(dataset, tmp_path / "ann.zip")
    done = stack.cli("submit", str(zip_path), "--model-name", "ann", "--epochs", "3", "--wait", "--json",
                     "--download", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id, events = events_of(done.stdout)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "succeeded", kinds
    epochs = [
        e["data"]["progress"]["epoch"] for e in events if e["kind"] == "progress" and e["data"]["progress"]
    ]
    assert set(epochs) >= {1, 2, 3}
    assert "3/3 epochs" in done.stderr and f"job {job_id} succeeded" in done.stderr
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".pth", ".index", ".json"}  # no preview here
    assert (tmp_path / "out" / "ann.pth").is_file()
    assert not stack.follow_subscriptions()  # deleted on exit

    status = stack.cli("status", job_id)
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout and "ann.pth" in status.stdout
    as_json = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert as_json["job_id"] == job_id and as_json["spec"]["epochs"] == 3

    listed = stack.cli("list", "--model", "ann")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [job_id]

    again = stack.cli("download", job_id, str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "ann.pth").read_bytes() == (tmp_path / "out" / "ann.pth").read_bytes()

    missing = stack.cli("status", "0123456789abcdef")
    assert missing.returncode == 1 and "no job" in missing.stderr


def test_metadata_is_set_as_gcloud_sets_it(stack: Stack, dataset: Path, tmp_path: Path) -> None:
    from consumer.adapters.storage.gcs import default_client

    zip_path = copy_as(dataset, tmp_path / "meta.zip")
    done = stack.cli("submit", str(zip_path), "--model-name", "meta", "--epochs", "1",
                     "--metadata", "author=Ann,f0-method=rmvpe")  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = default_client(stack.dev.env["STORAGE_EMULATOR_HOST"], project=stack.project)
    blob = client.bucket("inbox").get_blob("datasets/meta.zip")
    assert blob.content_type == "application/zip"
    assert blob.metadata == {"model-name": "meta", "epochs": "1", "author": "Ann", "f0-method": "rmvpe"}
    from consumer.jobs.records import job_id_for, source_key

    assert done.stdout.split()[0] == job_id_for(source_key("inbox", "datasets/meta.zip", blob.generation))


def test_two_clients_each_see_all_of_their_own_events_and_steal_none(
    stack: Stack, dataset: Path, tmp_path: Path
) -> None:
    stack.shared_results()  # drain what earlier tests left on the shared subscription
    clients = {
        name: stack.start_cli(
            "submit",
            str(copy_as(dataset, tmp_path / f"{name}.zip")),
            "--model-name",
            name,
            "--epochs",
            "4",
            "--wait",
            "--json",
        )
        for name in ("bea", "cal")
    }
    outputs = {name: c.communicate(timeout=180) for name, c in clients.items()}
    seen = {}
    for name, client in clients.items():
        assert client.returncode == 0, outputs[name][1]
        job_id, events = events_of(outputs[name][0])
        assert {e["job_id"] for e in events} == {job_id}
        assert all(e["data"]["model_name"] == name for e in events)
        seen[job_id] = {str(e["id"]) for e in events}
    shared = stack.shared_results()  # the other reader still got everything
    for job_id, ids in seen.items():
        assert ids == shared[job_id]
        assert any(i.endswith(".succeeded") for i in ids) and any(i.endswith(".accepted") for i in ids)


def test_ctrl_c_detaches_and_watch_reattaches(stack: Stack, dataset: Path, tmp_path: Path) -> None:
    zip_path = copy_as(dataset, tmp_path / "dee.zip")
    client = stack.start_cli(
        "submit", str(zip_path), "--model-name", "dee", "--epochs", "120", "--wait", "--json"
    )  # ~40 s of training on 2 CPU cores: the job is still running when Ctrl-C comes
    assert client.stdout is not None
    job_id = client.stdout.readline().strip()
    first_progress = threading.Event()

    def read() -> None:
        for line in client.stdout:  # type: ignore[union-attr]
            if '"kind": "progress"' in line:
                first_progress.set()

    threading.Thread(target=read, daemon=True).start()
    assert first_progress.wait(60)
    client.send_signal(signal.SIGINT)
    _, stderr = client.communicate(timeout=30)
    assert client.returncode == 130, stderr
    assert f"detached: job {job_id} goes on" in stderr
    assert f"rvc-trainer watch {job_id} --env-file {stack.env_file}" in stderr
    assert not stack.follow_subscriptions()

    status = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert status["status"] in ("running", "queued", "succeeded")
    watched = stack.cli("watch", job_id, "--poll", "2", timeout=180)
    assert watched.returncode == 0, watched.stderr
    assert "120/120 epochs" in watched.stderr


def test_a_failed_job_exits_1_with_its_code_and_message(stack: Stack, tmp_path: Path) -> None:
    not_a_zip = tmp_path / "bad.zip"
    not_a_zip.write_bytes(b"not a zip at all")
    done = stack.cli("submit", str(not_a_zip), "--model-name", "bad", "--epochs", "2", "--wait")
    assert done.returncode == 1, done.stderr
    job_id = done.stdout.split()[0]
    assert f"job {job_id} failed: " in done.stderr


def test_cancel_mid_training_exits_1_with_cancelled_and_one_final_event(
    stack: Stack, dataset: Path, tmp_path: Path
) -> None:
    zip_path = copy_as(dataset, tmp_path / "cal.zip")
    client = stack.start_cli(
        "submit", str(zip_path), "--model-name", "cal", "--epochs", "500", "--wait", "--json"
    )
    assert client.stdout is not None
    job_id = client.stdout.readline().strip()
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        for line in client.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if '"kind": "progress"' in line and '"stage": "train"' in line:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    errors: list[str] = []  # stderr read alongside, so the bar never fills the pipe
    error_reader = threading.Thread(target=lambda: errors.extend(client.stderr), daemon=True)  # type: ignore[arg-type]
    error_reader.start()
    assert training.wait(60)
    asked = time.monotonic()
    cancelled = stack.cli("cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    client.wait(timeout=60)  # not communicate(): the reader thread owns stdout, every line of it
    took = time.monotonic() - asked
    reader.join(10)
    error_reader.join(10)
    stderr = "".join(errors)
    assert client.returncode == 1, stderr
    assert f"job {job_id} cancelled: cancelled" in stderr
    assert took < 30, f"the job ended {took:.0f} s after the cancel"
    events = [json.loads(line) for line in lines if line.startswith("{")]
    finals = [e for e in events if e["kind"] in ("succeeded", "failed", "cancelled")]
    assert [e["kind"] for e in finals] == ["cancelled"]
    assert finals[0]["data"]["status"] == "cancelled"

    status = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert status["status"] == "cancelled" and status["error"]["code"] == "cancelled"
    again = stack.cli("cancel", job_id)
    assert again.returncode == 1 and "already finished (cancelled)" in again.stderr
    time.sleep(3)  # a second final event, if any, would be out by now
    ids = stack.shared_results()[job_id]
    assert [i for i in ids if i.endswith((".succeeded", ".failed", ".cancelled"))] == [f"{job_id}.cancelled"]


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The dev stack with the real pipeline (tiny preset, CPU)."""
    yield from start_stack(tmp_path_factory.mktemp("client-real"), service_env={"DEVICE": "cpu"})


@pytest.mark.slow
def test_real_training_downloads_a_loadable_model(real_stack: Stack, tmp_path: Path) -> None:
    import torch

    started = time.monotonic()
    zip_path = simple_dataset_zip(tmp_path / "eve.zip", files=3, seconds=6.0)  # the pipeline wants >= 10 s
    args = ["submit", str(zip_path), "--model-name", "eve", "--epochs", "1", "--wait"]
    done = real_stack.cli(*args, "--download", str(tmp_path / "out"), timeout=900)
    assert done.returncode == 0, done.stderr + real_stack.dev.log_dir.joinpath("all.log").read_text()[-3000:]
    files = {p.suffix: p for p in (tmp_path / "out").iterdir()}
    assert {".pth", ".index", ".wav", ".json"} <= set(files), files
    model = torch.load(files[".pth"], map_location="cpu", weights_only=False)
    assert isinstance(model, dict) and model
    assert json.loads(files[".json"].read_text())
    print(f"real tiny job, 1 epoch: {time.monotonic() - started:.1f} s from submit to downloaded")
