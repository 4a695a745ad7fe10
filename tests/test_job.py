"""The whole job through the CLI: zip in, a model RVC WebUI and Applio can load out."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

from rvc_core.job import run_job
from rvc_core.jobspec import JobEnvironment, JobSpec, sanitise_model_name
from rvc_core.spec import MODEL_SHAPES
from rvc_core.testing import simple_dataset_zip

REPO = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "fixtures" / "rvc_state_dicts" / "G_v2_40k_f0.tsv"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rvc_core", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("job")
    zip_path = simple_dataset_zip(root / "My Voice (take 1).zip", files=3, seconds=8.0)
    proc = _cli(
        "train",
        str(zip_path),
        "--out",
        str(root / "out"),
        "--preset",
        "tiny",
        "--assets",
        "none",
        "--pretrained",
        "none",
        "--epochs",
        "2",
        "--save-every",
        "1",
        "--f0-method",
        "pm",
        "--workers",
        "1",
        "--author",
        "tester",
        cwd=root,
    )
    return root / "out", proc


def test_cli_train_exits_zero_and_names_the_model_after_the_zip(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["status"] == "finished"
    assert Path(summary["artifacts"]["pth"]).name == "My_Voice_take_1.pth"


def test_exported_model_loads_safely_with_rvc_keys_and_config(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    import torch

    out, _ = trained
    model = torch.load(out / "My_Voice_take_1.pth", weights_only=True)
    assert model["sr"] == "40k" and model["f0"] == 1 and model["version"] == "v2"
    assert model["info"] == f"{model['epoch']}epoch"
    assert len(model["config"]) == 18 and model["config"][-1] == 40000
    assert model["author"] == "tester" and model["model_name"] == "My_Voice_take_1"
    weights = model["weight"]
    assert all(t.dtype == torch.float16 for t in weights.values())
    assert not any("enc_q" in k for k in weights)
    assert not any("parametrizations" in k for k in weights)
    # The tiny preset keeps RVC's names: every exported key is one the reference generator has.
    reference = {line.split("\t")[0] for line in MANIFEST.read_text().splitlines() if line.strip()}
    assert set(weights) <= reference
    assert weights["emb_g.weight"].shape[0] == MODEL_SHAPES[("v2", 40000)].spk_embed_dim


def test_output_folder_holds_index_preview_report_and_zip(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = trained
    index = list(out.glob("added_IVF*_Flat_nprobe_1_My_Voice_take_1_v2.index"))
    assert len(index) == 1
    audio, rate = sf.read(out / "preview.wav")
    assert rate == 40000 and len(audio) > rate // 2 and abs(audio).max() <= 1.0
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["epochs"] == 2 and len(report["training"]["history"]) == 2
    assert report["training"]["best_epoch"] in (1, 2)
    assert report["dataset"]["totals"]["segments"] >= 2
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    with zipfile.ZipFile(out / "My_Voice_take_1.zip") as zf:
        assert sorted(zf.namelist()) == sorted(["My_Voice_take_1.pth", index[0].name])


def test_save_every_exports_each_epoch(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = trained
    assert (out / "My_Voice_take_1_e1.pth").exists() and (out / "My_Voice_take_1_e2.pth").exists()


def test_rerun_into_a_used_folder_without_resume_is_refused(
    trained: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = trained
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=8.0)
    proc = _cli(
        "train", str(zip_path), "--out", str(out), "--preset", "tiny", "--assets", "none", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and proc.stderr.startswith("error: invalid_config: ")


def test_paused_job_continues_to_the_same_finish(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=8.0)
    spec = JobSpec(model_name="pausy", epochs=2, preset="tiny", f0_method="pm")
    env = JobEnvironment(assets="none", pretrained="none", workers=1)
    calls = iter([True])  # stop at the first clean point, then never again
    first = run_job(
        zip_path, tmp_path / "w", tmp_path / "o", spec, env, should_stop=lambda: next(calls, False)
    )
    assert first.status == "paused"
    assert not (tmp_path / "o" / "pausy.pth").exists()
    second = run_job(zip_path, tmp_path / "w", tmp_path / "o", spec, env)
    assert second.status == "finished" and second.epoch == 2
    assert second.artifacts["pth"].exists()


def test_missing_pretrained_files_are_named(tmp_path: Path) -> None:
    from rvc_core.errors import AssetMissing

    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=8.0)
    spec = JobSpec(model_name="x", epochs=1, preset="tiny", f0_method="pm")
    env = JobEnvironment(assets="none", pretrained=str(tmp_path / "nothing-here"), workers=1)
    with pytest.raises(AssetMissing, match=r"f0G40k\.pth"):
        run_job(zip_path, tmp_path / "w", tmp_path / "o", spec, env)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("My Voice (take 1)", "My_Voice_take_1"), ("Grüße", "Gr_e"), ("...", "model"), ("a" * 80, "a" * 64)],
)
def test_model_names_are_sanitised(raw: str, expected: str) -> None:
    assert sanitise_model_name(raw) == expected


@pytest.mark.parametrize(("flag", "expected"), [("auto", None), ("on", True), ("off", False)])
def test_train_cli_compile_flag_reaches_the_training_config(
    flag: str, expected: bool | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvc_core.job
    from rvc_core.cli import main
    from rvc_core.job_stages import train_config

    seen: list[JobEnvironment] = []

    def capture(
        _zip: Path, _work: Path, _out: Path, _spec: JobSpec, env: JobEnvironment, **_: object
    ) -> None:
        seen.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(rvc_core.job, "run_job", capture)
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "v.zip"), "--out", str(tmp_path / "out"), "--compile", flag], env={})
    assert seen[0].compile is expected
    config = train_config(JobSpec(model_name="v", preset="tiny"), seen[0], {"RVC_PRETRAINED": "none"})
    assert config.compile is expected


def test_train_cli_precision_flag_reaches_the_training_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvc_core.job
    from rvc_core.cli import main
    from rvc_core.job_stages import train_config

    seen: list[JobEnvironment] = []

    def capture(*args: object, **_: object) -> None:
        seen.append(args[4])  # type: ignore[arg-type]
        raise SystemExit(0)

    monkeypatch.setattr(rvc_core.job, "run_job", capture)
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "v.zip"), "--out", str(tmp_path / "o"), "--precision", "bf16"], env={})
    config = train_config(JobSpec(model_name="v", preset="tiny"), seen[0], {"RVC_PRETRAINED": "none"})
    assert (seen[0].precision, config.precision) == ("bf16", "bf16")
    with pytest.raises(SystemExit):  # argparse refuses what train cannot use
        main(["train", str(tmp_path / "v.zip"), "--out", str(tmp_path / "o"), "--precision", "fp8"], env={})
    assert len(seen) == 1
