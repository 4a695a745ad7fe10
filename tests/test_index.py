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


def test_a_build_resumed_after_its_kmeans_reads_no_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvc_core.index as index_module
    from rvc_core.prepare import Budget, Paused

    monkeypatch.setattr(index_module, "KMEANS_THRESHOLD", 2_000)
    monkeypatch.setattr(index_module, "KMEANS_CENTROIDS", 100)
    feats = np.random.default_rng(3).standard_normal((3_000, 64)).astype(np.float32)
    loads: list[int] = []

    def load() -> np.ndarray:
        loads.append(1)
        return feats

    class StopAfterKmeans(Budget):
        def check(self, stage: str, seconds: float = 0.0, done: int = 0) -> None:
            if (tmp_path / "state" / "kmeans.npy").exists():
                raise Paused(stage, done)

    with pytest.raises(Paused):
        build_index(
            load, tmp_path / "out", "erin", "v2", state_dir=tmp_path / "state", budget=StopAfterKmeans()
        )
    resumed = build_index(load, tmp_path / "out", "erin", "v2", state_dir=tmp_path / "state")
    assert loads == [1]  # the 3 000 frames were read once, by the call that reduced them
    assert resumed.vectors == 100
    whole = build_index(feats, tmp_path / "whole", "erin", "v2")
    assert whole.n_lists == resumed.n_lists and whole.vectors == resumed.vectors


def test_a_paused_build_resumes_between_kmeans_iterations_to_the_same_index(tmp_path: Path) -> None:
    import faiss

    from rvc_core.index import IVF_ITERATIONS
    from rvc_core.prepare import Budget, Paused

    class StopAfter(Budget):
        """Pauses before the `limit`-th unit: a deadline without the clock's noise."""

        def __init__(self, limit: int) -> None:
            super().__init__(deadline=0.0)
            self.limit, self.units = limit, 0

        def check(self, stage: str, seconds: float = 0.0, done: int = 0) -> None:
            self.units += 1
            if self.units > self.limit:
                raise Paused(stage, done)

    feats = np.random.default_rng(2).standard_normal((3_000, 64)).astype(np.float32)
    whole = build_index(feats, tmp_path / "a", "dan", "v2", state_dir=tmp_path / "sa")
    state = tmp_path / "sb"
    with pytest.raises(Paused) as first:
        build_index(feats, tmp_path / "b", "dan", "v2", state_dir=state, budget=StopAfter(3))
    assert first.value.stage == "index" and first.value.done == 3
    assert (state / "ivf_centroids.npy").exists()
    with pytest.raises(Paused) as second:
        build_index(feats, tmp_path / "b", "dan", "v2", state_dir=state, budget=StopAfter(4))
    assert second.value.done == 7
    resumed = build_index(feats, tmp_path / "b", "dan", "v2", state_dir=state)
    assert resumed.n_lists == whole.n_lists and IVF_ITERATIONS == 10
    a, b = (faiss.read_index(str(r.path)) for r in (whole, resumed))
    qa, qb = (faiss.extract_index_ivf(i).quantizer for i in (a, b))
    assert np.allclose(qa.reconstruct_n(0, qa.ntotal), qb.reconstruct_n(0, qb.ntotal), atol=1e-4)
    assert b.ntotal == len(feats)
