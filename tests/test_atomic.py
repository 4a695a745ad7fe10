"""Atomic outputs: a reader sees the old file or the whole new one, never a part, and a failed write
leaves nothing behind (no half file, no temporary)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rvc_core.atomic import atomic_file, default_file_mode, write_bytes, write_npy
from rvc_core.audio_io import read_wav_float32, write_wav_float32


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.bin"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"new, but not finished")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_outputs_get_the_usual_permissions_and_round_trip(tmp_path: Path) -> None:
    samples = np.linspace(-0.5, 0.5, 4000, dtype=np.float32)
    write_wav_float32(tmp_path / "seg.wav", samples, 40000)
    write_npy(tmp_path / "f0.npy", samples[:10])
    read, rate = read_wav_float32(tmp_path / "seg.wav")
    assert rate == 40000 and np.array_equal(read, samples)
    assert np.array_equal(np.load(tmp_path / "f0.npy"), samples[:10])
    for name in ("seg.wav", "f0.npy"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == default_file_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.npy", "seg.wav"]
