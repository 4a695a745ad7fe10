"""The retrieval index (RVC.md §1.2): faiss IVF-Flat over the dataset's content-feature frames."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_core.atomic import atomic_path

log = logging.getLogger(__name__)

ADD_BATCH = 8192
KMEANS_THRESHOLD = 200_000  # above this many frames, index k-means centroids instead
KMEANS_CENTROIDS = 10_000


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


def index_file_name(model_name: str, version: str, n_lists: int) -> str:
    # Never "trained" in the name: RVC WebUI and Applio both filter such files out.
    return f"added_IVF{n_lists}_Flat_nprobe_1_{model_name}_{version}.index"


def stack_features(paths: Sequence[Path]) -> np.ndarray:
    return np.concatenate([np.load(p).astype(np.float32) for p in paths], axis=0)


def reduce_with_kmeans(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

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


def build_index(
    features: np.ndarray,
    out_dir: Path,
    model_name: str,
    version: str,
    *,
    seed: int = 0,
    use_gpu: bool = False,
) -> IndexResult:
    """Trains and fills an `IVF{n},Flat` index (L2, nprobe 1) and writes it atomically."""
    import faiss

    if features.ndim != 2 or len(features) == 0:
        raise ValueError("build_index needs a non-empty [frames, dim] array")
    rng = np.random.default_rng(seed)
    vectors = features[rng.permutation(len(features))]
    if len(vectors) > KMEANS_THRESHOLD:
        vectors = reduce_with_kmeans(vectors, seed)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n_lists = ivf_list_count(len(vectors))
    dim = vectors.shape[1]
    index = faiss.index_factory(dim, f"IVF{n_lists},Flat")
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = 1
    if use_gpu and hasattr(faiss, "StandardGpuResources"):
        # Train on the GPU (the slow part), then move back so the saved index is a CPU one.
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        gpu_index.train(vectors)
        index = faiss.index_gpu_to_cpu(gpu_index)
    else:
        index.train(vectors)
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(vectors[start : start + ADD_BATCH])
    out = Path(out_dir) / index_file_name(model_name, version, n_lists)
    with atomic_path(out) as tmp:
        faiss.write_index(index, str(tmp))
    return IndexResult(path=out, n_lists=n_lists, vectors=len(vectors), dim=dim)
