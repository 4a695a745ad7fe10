"""Scratch space (WORK_ROOT is memory on Cloud Run): folders of jobs this instance no longer runs are
evicted least recently used first, within a budget derived from the instance's memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from consumer.settings import Settings
from consumer.work.scratch import ScratchSpace, default_budget, folder_bytes, memory_limit_bytes
from rvc_core.testing import simple_dataset_zip
from tests.factories_consumer import FakeTrainer
from tests.test_slices import accept_only, make_stack, post_token


def job_folder(root: Path, job_id: str, size: int, used: float) -> Path:
    folder = root / job_id
    (folder / "work").mkdir(parents=True)
    (folder / "work" / "blob").write_bytes(b"x" * size)
    marker = folder / ".last-used"
    marker.touch()
    os.utime(marker, (used, used))
    return folder


def test_least_recently_used_folders_go_first_until_the_budget_fits(tmp_path: Path) -> None:
    now = time.time()
    job_folder(tmp_path, "old", 1000, now - 300)
    job_folder(tmp_path, "mid", 1000, now - 200)
    job_folder(tmp_path, "new", 1000, now - 100)
    scratch = ScratchSpace(tmp_path, budget=2500)
    evicted = scratch.use("running")
    assert [e.job_id for e in evicted] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new", "running"]
    assert folder_bytes(tmp_path) <= 2500


def test_the_running_job_is_never_evicted(tmp_path: Path) -> None:
    job_folder(tmp_path, "running", 5000, time.time() - 1000)
    job_folder(tmp_path, "other", 10, time.time())
    evicted = ScratchSpace(tmp_path, budget=100).use("running")
    assert [e.job_id for e in evicted] == ["other"]
    assert (tmp_path / "running" / "work" / "blob").exists()


def test_budget_defaults_to_forty_percent_of_the_cgroup_limit(tmp_path: Path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text(f"{16 * 1024**3}\n")
    assert memory_limit_bytes((limit,)) == min(16 * 1024**3, memory_limit_bytes(()))
    limit.write_text("max\n")  # no cgroup limit: the machine's RAM
    assert memory_limit_bytes((limit,)) == memory_limit_bytes(())
    assert default_budget() == int(memory_limit_bytes() * 0.4)


def test_scratch_budget_setting() -> None:
    env = {"STATE_BUCKET": "file:///s", "MODELS_BUCKET": "file:///m", "MESSAGING": "local"}
    assert Settings.from_env(env).scratch_budget_bytes == 0  # derived
    assert Settings.from_env({**env, "SCRATCH_BUDGET_BYTES": "1048576"}).scratch_budget_bytes == 1048576


def test_a_slice_evicts_other_jobs_scratch_on_a_small_budget(tmp_path: Path) -> None:
    dataset = simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)
    stack = make_stack(tmp_path / "stack", FakeTrainer(epochs_per_call=1), SCRATCH_BUDGET_BYTES="1")
    scratch = tmp_path / "stack" / "scratch"
    job_folder(scratch, "0123456789abcdef", 10_000, time.time() - 60)  # a job run here before
    job_id = accept_only(stack, dataset, {"epochs": "3"})
    assert post_token(stack, job_id, 0).get_json()["outcome"] == "advanced"
    assert [p.name for p in scratch.iterdir()] == [job_id]


# --- the longest dataset an instance's memory can prepare (MAX_AUDIO_MINUTES' default) -------------
def test_longest_dataset_follows_the_memory_and_the_preset() -> None:
    from rvc_core.scratch_need import MIN_AUDIO_MINUTES, max_audio_minutes

    gib = 1024**3
    # docs/workdir.md: about 2 hours on Cloud Run's 16 GiB L4, about 6 on 32 GiB.
    assert 100 < max_audio_minutes(16 * gib, "full") < 130
    assert 350 < max_audio_minutes(32 * gib, "full") < 400
    assert max_audio_minutes(16 * gib, "tiny") > max_audio_minutes(16 * gib, "full")
    assert max_audio_minutes(4 * gib, "full") == MIN_AUDIO_MINUTES


def test_default_limit_is_read_from_the_instance_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer import settings

    monkeypatch.setattr(settings, "memory_limit_bytes", lambda: 32 * 1024**3)
    roomy = settings.default_max_audio_minutes("full")
    monkeypatch.setattr(settings, "memory_limit_bytes", lambda: 16 * 1024**3)
    assert settings.default_max_audio_minutes("full") < roomy
