"""Our inference path: retrieval blending as RVC does it, and the generator run for a preview."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from rvc_core.index import build_index
from rvc_core.infer import RetrievalIndex, convert


@pytest.fixture
def index(tmp_path: Path) -> RetrievalIndex:
    feats = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    return RetrievalIndex.load(build_index(feats, tmp_path, "m", "v2").path)


def test_blend_moves_unseen_frames_towards_their_neighbours(index: RetrievalIndex) -> None:
    query = np.random.default_rng(1).standard_normal((10, 16)).astype(np.float32)
    full = index.blend(query, rate=1.0)
    none = index.blend(query, rate=0.0)
    assert np.allclose(none, query)
    # Fully retrieved frames are weighted means of stored vectors: closer to the data than the query.
    nearest = [np.min(np.linalg.norm(index.vectors - q, axis=1)) for q in query]
    assert all(np.linalg.norm(f - q) > 0 for f, q in zip(full, query, strict=True))
    assert np.mean([np.min(np.linalg.norm(index.vectors - f, axis=1)) for f in full]) < np.mean(nearest)


def test_frames_stored_in_the_index_retrieve_only_themselves_unless_excluded(index: RetrievalIndex) -> None:
    own = index.vectors[:5]
    assert np.allclose(index.blend(own, rate=1.0), own, atol=1e-4)
    assert not np.allclose(index.blend(own, rate=1.0, exclude_exact=True), own, atol=1e-2)


def test_sparse_list_with_empty_neighbour_slots_blends_without_overflow(tmp_path: Path) -> None:
    # 72 frames in one cluster, 6 far away: n = 2 lists, and a query near the small cluster probes a
    # list holding fewer than k=8 vectors, so faiss pads the answer with id -1 and FLT_MAX.
    rng = np.random.default_rng(2)
    big = rng.standard_normal((72, 8)) * 0.1
    small = rng.standard_normal((6, 8)) * 0.1 + 50.0
    idx = RetrievalIndex.load(
        build_index(np.vstack([big, small]).astype(np.float32), tmp_path, "s", "v2").path
    )
    query = (small[:3] + 0.01).astype(np.float32)
    _, ids = idx.index.search(query, 8)
    assert (ids < 0).any()  # the situation under test really happens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = idx.blend(query, rate=1.0)
    assert np.isfinite(out).all() and np.allclose(out.mean(axis=0), small.mean(axis=0), atol=0.5)


def test_convert_returns_hop_samples_per_pitch_frame() -> None:
    from rvc_core.models import build_generator

    g = build_generator("v2", 40000, preset="tiny").eval()
    feats = np.random.default_rng(4).standard_normal((50, 768)).astype(np.float32)  # 1 s at 50 fps
    f0 = np.full(101, 200.0, dtype=np.float32)  # 1 s at 100 fps, n//160 + 1 frames
    audio = convert(g, feats, f0)
    assert audio.dtype == np.float32 and audio.shape == (100 * g.hop_length,)
    assert np.abs(audio).max() <= 1.0
