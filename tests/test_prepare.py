"""`prepare` end to end: a dataset zip becomes segments, pitch and features, resumably."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rvc_core.assets import AssetStore
from rvc_core.config import PrepareConfig
from rvc_core.errors import ConfigMismatch, TooLittleAudio, TooMuchAudio
from rvc_core.layout import WorkDir
from rvc_core.prepare import run_prepare
from rvc_core.testing import DatasetFile, DatasetSpec, build_dataset_zip, simple_dataset_zip

RANDOM_ASSETS = AssetStore(None)
FAST = PrepareConfig(f0_method="pm")


def _mp3_bytes(tmp_path: Path) -> bytes:
    src = tmp_path / "src.wav"
    build_dataset_zip(tmp_path / "tmp.zip", DatasetSpec([DatasetFile("x.wav", seconds=6.0, seed=9)]))
    import zipfile

    with zipfile.ZipFile(tmp_path / "tmp.zip") as zf:
        src.write_bytes(zf.read("x.wav"))
    out = tmp_path / "x.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(out)], check=True)
    return out.read_bytes()


@pytest.fixture
def multi_speaker_zip(tmp_path: Path) -> Path:
    spec = DatasetSpec(
        files=[
            DatasetFile("0/intro.wav", seconds=7.0, sample_rate=44100, subtype="PCM_16", seed=1),
            DatasetFile("0/deeper/Grüße – take 2.flac", seconds=6.0, sample_rate=48000, fmt="FLAC", seed=2),
            DatasetFile(
                "1/stereo.wav",
                seconds=6.0,
                sample_rate=22050,
                channels=2,
                subtype="FLOAT",
                seed=3,
                base_f0=220.0,
            ),
            DatasetFile("1/song.ogg", seconds=5.0, sample_rate=32000, fmt="OGG", seed=4, base_f0=220.0),
        ],
        extra={"__MACOSX/0/._intro.wav": b"\x00\x05", "notes.txt": b"hello", "1/.DS_Store": b"x"},
    )
    if shutil.which("ffmpeg"):
        spec.extra["0/clip.mp3"] = _mp3_bytes(tmp_path)
    return build_dataset_zip(tmp_path / "voices.zip", spec)


def test_multi_format_multi_speaker_dataset_is_prepared_end_to_end(
    tmp_path: Path, multi_speaker_zip: Path
) -> None:
    prepared = run_prepare(multi_speaker_zip, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    wd = prepared.workdir
    report = json.loads(wd.report.read_text())
    assert report["status"] == "ok"
    assert report["totals"]["speakers"] == [0, 1]
    assert report["totals"]["files_used"] == report["totals"]["files"] >= 4
    ignored = {i["name"] for i in report["ignored"]}
    assert {"__MACOSX/0/._intro.wav", "notes.txt", "1/.DS_Store"} <= ignored
    assert {f["sample_rate"] for f in report["files"]} >= {44100, 48000, 22050, 32000}
    assert any(f["channels"] == 2 for f in report["files"])
    assert prepared.segments
    for seg in prepared.segments:
        n16k = len(np.load(wd.f0_dir / f"{seg.id}.npy"))
        feats = np.load(wd.features_dir / f"{seg.id}.npy")
        coarse = np.load(wd.coarse_dir / f"{seg.id}.npy")
        assert feats.shape[1] == 768 and np.isfinite(feats).all()
        assert coarse.min() >= 1 and coarse.max() <= 255 and len(coarse) == n16k
        # Features at 50 frames/s doubled line up with pitch at 100 frames/s, within a window.
        assert abs(2 * len(feats) - n16k) <= 4
        assert (wd.wav_dir / f"{seg.id}.wav").exists() and (wd.wav16k_dir / f"{seg.id}.wav").exists()
    speakers = {seg.speaker_id for seg in prepared.segments}
    assert speakers == {0, 1}


def test_second_run_skips_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=2, seconds=8.0)
    first = run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("rvc_core.prepare.preprocess_all", boom)
    monkeypatch.setattr("rvc_core.prepare.extract_dataset", boom)
    second = run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    assert [s.id for s in second.segments] == [s.id for s in first.segments]


def test_interrupted_feature_stage_resumes_only_missing_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=2, seconds=8.0)
    prepared = run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    wd = prepared.workdir
    # Simulate a crash in the middle of the feature stage: marker gone, some outputs gone.
    wd.stage_marker("features").unlink()
    lost = prepared.segments[: max(1, len(prepared.segments) // 2)]
    kept = prepared.segments[len(lost) :]
    kept_mtimes = {s.id: (wd.features_dir / f"{s.id}.npy").stat().st_mtime_ns for s in kept}
    for s in lost:
        (wd.features_dir / f"{s.id}.npy").unlink()
    calls: list[int] = []
    import rvc_core.prepare as prep

    real = prep._batches

    def counting(segments, max_seconds):  # type: ignore[no-untyped-def]
        calls.append(len(segments))
        return real(segments, max_seconds)

    monkeypatch.setattr(prep, "_batches", counting)
    run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    assert calls == [len(lost)]
    assert all((wd.features_dir / f"{s.id}.npy").exists() for s in prepared.segments)
    assert all(
        (wd.features_dir / f"{s.id}.npy").stat().st_mtime_ns == m
        for s, m in ((s, kept_mtimes[s.id]) for s in kept)
    )
    assert wd.is_done("features")


def test_rerun_with_another_config_is_refused(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=2, seconds=8.0)
    run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    with pytest.raises(ConfigMismatch, match="sample_rate"):
        run_prepare(
            zip_path,
            tmp_path / "work",
            PrepareConfig(sample_rate=48000, f0_method="pm"),
            assets=RANDOM_ASSETS,
            workers=1,
        )


def test_dataset_under_ten_seconds_is_rejected_with_report(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=1, seconds=4.0)
    with pytest.raises(TooLittleAudio):
        run_prepare(zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1)
    assert WorkDir(tmp_path / "work").report.exists()


# --- the longest dataset a job may prepare (its scratch budget) -----------------------------------
def test_dataset_longer_than_the_limit_is_refused_before_any_segment(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=6.0)  # 18 s
    work = WorkDir(tmp_path / "work")

    with pytest.raises(TooMuchAudio) as refused:
        run_prepare(zip_path, work.root, FAST, assets=RANDOM_ASSETS, workers=1, max_audio_seconds=12.0)

    assert refused.value.code == "too_much_audio"
    assert "3 audio file(s) hold 0.3 minutes" in refused.value.message
    assert "at most 0.2 minutes" in refused.value.message
    report = json.loads(work.report.read_text())
    assert report["status"] == "rejected" and report["error"]["code"] == "too_much_audio"
    # Nothing was prepared, and the extracted copy is gone with the refusal.
    assert not work.extract_dir.exists() and not work.wav_dir.exists()


def test_dataset_within_the_limit_is_prepared(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=6.0)

    prepared = run_prepare(
        zip_path, tmp_path / "work", FAST, assets=RANDOM_ASSETS, workers=1, until="preprocess",
        max_audio_seconds=18.5,
    )  # fmt: skip

    assert prepared.report.totals.input_seconds == pytest.approx(18.0)


def test_a_header_that_understates_the_length_is_caught_while_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=3, seconds=6.0)
    monkeypatch.setattr("rvc_core.preprocess.length.probe_seconds", lambda _path: 1.0)
    work = WorkDir(tmp_path / "work")

    with pytest.raises(TooMuchAudio, match=r"decode to 0\.3 minutes"):
        run_prepare(zip_path, work.root, FAST, assets=RANDOM_ASSETS, workers=1, max_audio_seconds=12.0)

    assert json.loads(work.report.read_text())["error"]["code"] == "too_much_audio"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "rvc_core", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(cwd),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        },
    )


def test_cli_prepare_prints_report_and_exits_zero(tmp_path: Path) -> None:
    zip_path = simple_dataset_zip(tmp_path / "v.zip", files=2, seconds=8.0)
    proc = _cli(
        "prepare",
        str(zip_path),
        "--out",
        str(tmp_path / "w"),
        "--assets",
        "none",
        "--f0-method",
        "pm",
        "--workers",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usable" in proc.stdout
    assert (tmp_path / "w" / "report.json").exists()


def test_cli_rejects_a_non_zip_with_one_error_line_and_a_report(tmp_path: Path) -> None:
    bogus = tmp_path / "voice.zip"
    bogus.write_bytes(b"RIFF0000WAVEfmt " + bytes(100))
    before = set(tmp_path.iterdir())
    proc = _cli("prepare", str(bogus), "--out", str(tmp_path / "w"), "--assets", "none", cwd=tmp_path)
    assert proc.returncode == 2
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert error_lines == [error_lines[0]] and error_lines[0].startswith("error: not_a_zip: ")
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert report["status"] == "rejected" and report["error"]["code"] == "not_a_zip"
    assert set(tmp_path.iterdir()) - before == {tmp_path / "w"}
