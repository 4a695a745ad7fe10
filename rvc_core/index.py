"""The retrieval index (RVC.md §1.2): faiss IVF-Flat over the dataset's content-feature frames.

Building it can outlast a work slice, so it runs in units that each fit one: the k-means reduction
of a large dataset (one unit, on at most `KMEANS_MAX_FRAMES` sampled frames so its cost is
bounded), each of the coarse quantizer's `IVF_ITERATIONS` k-means iterations (their centroids kept
in `state_dir` between units), and filling and writing the index. With a `budget`, each unit is
estimated first and the build pauses (`Paused`) before one that would pass the deadline.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_core.atomic import atomic_path, write_json, write_npy

if TYPE_CHECKING:
    from rvc_core.prepare import Budget

log = logging.getLogger(__name__)

ADD_BATCH = 8192
KMEANS_THRESHOLD = 200_000  # above this many frames, index k-means centroids instead
KMEANS_CENTROIDS = 10_000
# The reduction's input is capped (a seeded sample) so its cost, one unit that cannot stop
# midway, stays bounded: 70 minutes of audio (210k frames) took 159 s on 2 cores.
KMEANS_MAX_FRAMES = 400_000
IVF_ITERATIONS = 10  # faiss's default for training an IVF coarse quantizer
# Below this many cost units an iteration's time is mostly fixed overhead: not a rate to learn.
MIN_RATE_UNITS = 0.01


@dataclass(frozen=True)
class IndexResult:
    path: Path
    n_lists: int  # the IVF `n`
    vectors: int  # frames (or centroids) added
    dim: int


def ivf_list_count(frames: int) -> int:
    """RVC's `n`; the `max(1, …)` keeps tiny datasets working where the old tools crash."""
    return max(1, min(int(16 * math.sqrt(frames)), frames // 39))


def planned_list_count(frames: int) -> int:
    """The `n` an index of `frames` feature frames gets, counting the k-means reduction."""
    return ivf_list_count(KMEANS_CENTROIDS if frames > KMEANS_THRESHOLD else frames)


def index_file_name(model_name: str, version: str, n_lists: int | str) -> str:
    """The index file's name; `n_lists="*"` gives the glob of every size."""
    # Never "trained" in the name: RVC WebUI and Applio both filter such files out.
    return f"added_IVF{n_lists}_Flat_nprobe_1_{model_name}_{version}.index"


def stack_features(paths: Sequence[Path]) -> np.ndarray:
    return np.concatenate([np.load(p).astype(np.float32) for p in paths], axis=0)


def reduce_with_kmeans(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    if len(features) > KMEANS_MAX_FRAMES:
        pick = np.sort(np.random.default_rng(seed).choice(len(features), KMEANS_MAX_FRAMES, replace=False))
        features = features[pick]
    log.info("reducing %d frames to %d k-means centroids", len(features), KMEANS_CENTROIDS)
    km = MiniBatchKMeans(
        n_clusters=KMEANS_CENTROIDS,
        batch_size=256 * 8,
        init="random",
        compute_labels=False,
        random_state=seed,
        n_init=1,
    )
    return km.fit(features).cluster_centers_.astype(np.float32)


def _iteration_units(frames: int, n_lists: int, dim: int) -> float:
    """A k-means iteration's (or an add's) cost unit: 1e12 frame x list x dim multiply-adds."""
    return frames * n_lists * dim / 1e12


def build_index(
    features: np.ndarray | Callable[[], np.ndarray],
    out_dir: Path,
    model_name: str,
    version: str,
    *,
    seed: int = 0,
    use_gpu: bool = False,
    state_dir: Path | None = None,
    budget: Budget | None = None,
) -> IndexResult:
    """Trains and fills an `IVF{n},Flat` index (L2, nprobe 1) and writes it atomically.

    `state_dir` keeps the finished units (the reduction, the quantizer's centroids after each
    iteration) so a build paused by `budget` continues there; without it a temporary folder is used.
    `features` may be a loader, called only when the state does not already hold what the build
    needs: a build resumed after its k-means reduction reads no features."""
    import tempfile

    if state_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_index(
                features, out_dir, model_name, version, seed=seed, use_gpu=use_gpu, state_dir=Path(tmp),
                budget=budget,
            )  # fmt: skip
    from rvc_core.prepare import Budget, monotonic

    budget = budget or Budget()
    state_dir.mkdir(parents=True, exist_ok=True)
    reduced = state_dir / "kmeans.npy"  # written only for datasets over KMEANS_THRESHOLD frames
    if reduced.exists():
        vectors = np.load(reduced)
    else:
        features = features() if callable(features) else features
        if features.ndim != 2 or len(features) == 0:
            raise ValueError("build_index needs a non-empty [frames, dim] array")
        vectors = features[np.random.default_rng(seed).permutation(len(features))]
        if len(vectors) > KMEANS_THRESHOLD:
            sampled = min(len(vectors), KMEANS_MAX_FRAMES)
            budget.check("index", budget.estimate("kmeans", sampled / 10_000))
            started = monotonic()
            vectors = reduce_with_kmeans(vectors, seed)
            write_npy(reduced, vectors)
            budget.record("kmeans", monotonic() - started, sampled / 10_000)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n_lists = ivf_list_count(len(vectors))
    dim = vectors.shape[1]
    centroids = _train_quantizer(vectors, n_lists, seed, use_gpu, state_dir, budget)
    units = _iteration_units(len(vectors), n_lists, dim)
    budget.check("index", budget.estimate("ivf_add", units), IVF_ITERATIONS)
    started = time.perf_counter()
    out = _write_ivf(vectors, centroids, Path(out_dir) / index_file_name(model_name, version, n_lists))
    budget.record("ivf_add", time.perf_counter() - started, units if units >= MIN_RATE_UNITS else 0)
    return IndexResult(path=out, n_lists=n_lists, vectors=len(vectors), dim=dim)


def _train_quantizer(
    vectors: np.ndarray, n_lists: int, seed: int, use_gpu: bool, state_dir: Path, budget: Budget
) -> np.ndarray:
    """The coarse quantizer's centroids: faiss k-means, one iteration per unit, resumable."""
    import faiss

    from rvc_core.prepare import monotonic

    state_path, centroids_path = state_dir / "ivf.json", state_dir / "ivf_centroids.npy"
    shape = {"frames": len(vectors), "n_lists": n_lists, "dim": vectors.shape[1]}
    done, centroids = 0, None
    if state_path.exists() and centroids_path.exists():
        state = json.loads(state_path.read_text())
        if all(state.get(k) == v for k, v in shape.items()):
            done, centroids = int(state["iterations"]), np.load(centroids_path)
    units = _iteration_units(len(vectors), n_lists, vectors.shape[1])
    gpu = use_gpu and hasattr(faiss, "StandardGpuResources")
    while done < IVF_ITERATIONS:
        budget.check("index", budget.estimate("ivf_iteration", units), done)
        started = monotonic()
        km = faiss.Kmeans(vectors.shape[1], n_lists, niter=1, seed=seed, gpu=gpu, verbose=False)
        km.train(vectors, init_centroids=centroids)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        done += 1
        write_npy(centroids_path, centroids)
        write_json(state_path, {**shape, "iterations": done})
        budget.record("ivf_iteration", monotonic() - started, units if units >= MIN_RATE_UNITS else 0)
    assert centroids is not None
    return centroids


def _write_ivf(vectors: np.ndarray, centroids: np.ndarray, out: Path) -> Path:
    import faiss

    n_lists, dim = centroids.shape
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_L2)
    assert index.is_trained  # a quantizer holding n_lists centroids needs no training
    index.nprobe = 1
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(vectors[start : start + ADD_BATCH])
    with atomic_path(out) as tmp:
        faiss.write_index(index, str(tmp))
    return out
