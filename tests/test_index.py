"""The retrieval index: RVC's list count, file name, and a file both tools can load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rvc_core.index import build_index, index_file_name, ivf_list_count, planned_list_count


@pytest.mark.parametrize(
    ("frames", "expected"),
    [(100, 2), (5_000, 128), (32_000, 820), (300_000, 256), (10, 1), (1, 1), (39, 1), (78, 2)],
)
def test_list_count_follows_rvc_formula_and_never_reaches_zero(frames: int, expected: int) -> None:
    assert planned_list_count(frames) == expected


def test_index_name_has_rvc_shape_and_never_says_trained() -> None:
    name = index_file_name("alice", "v2", 128)
    assert name == "added_IVF128_Flat_nprobe_1_alice_v2.index"
    assert "trained" not in name


@pytest.mark.parametrize("frames", [20, 500, 4_000])
def test_built_index_holds_every_frame_and_finds_them(tmp_path: Path, frames: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((frames, 768)).astype(np.float32)
    result = build_index(feats, tmp_path, "bob", "v2")
    assert result.path.name == index_file_name("bob", "v2", ivf_list_count(frames))
    index = faiss.read_index(str(result.path))
    assert index.ntotal == frames
    assert faiss.extract_index_ivf(index).nprobe == 1
    assert faiss.extract_index_ivf(index).nlist == ivf_list_count(frames)
    # An exact stored vector is its own nearest neighbour, once nprobe covers every list.
    faiss.extract_index_ivf(index).nprobe = result.n_lists
    dist, _ = index.search(feats[:5], 1)
    assert np.allclose(dist[:, 0], 0.0, atol=1e-3)
    assert not list(tmp_path.glob(".*tmp"))


def test_large_datasets_are_reduced_to_kmeans_centroids_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvc_core.index as index_module

    monkeypatch.setattr(index_module, "KMEANS_THRESHOLD", 2_000)
    monkeypatch.setattr(index_module, "KMEANS_CENTROIDS", 100)
    feats = np.random.default_rng(1).standard_normal((3_000, 256)).astype(np.float32)
    result = build_index(feats, tmp_path, "carol", "v1")
    assert result.vectors == 100
    assert result.n_lists == ivf_list_count(100)
    assert result.path.name.endswith("_carol_v1.index")
