"""Our own inference path (features → index blending → pitch → generator), used for `preview.wav`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_NEIGHBOURS = 8
DEFAULT_INDEX_RATE = 0.75  # RVC WebUI's default retrieval blend


@dataclass(frozen=True)
class RetrievalIndex:
    """A faiss index plus the vectors it holds, for neighbour blending."""

    index: object
    vectors: np.ndarray  # [n, dim] float32

    @classmethod
    def load(cls, path: Path) -> RetrievalIndex:
        import faiss

        index = faiss.read_index(str(path))
        ivf = faiss.extract_index_ivf(index)
        ivf.make_direct_map()
        return cls(index=index, vectors=index.reconstruct_n(0, index.ntotal))

    def blend(
        self, features: np.ndarray, rate: float = DEFAULT_INDEX_RATE, *, exclude_exact: bool = False
    ) -> np.ndarray:
        """Mixes each frame with the inverse-square-distance weighted mean of its neighbours (RVC's
        k=8, weights 1/d² on faiss's squared-L2 score). `exclude_exact` skips neighbours identical to
        the frame: an utterance that is itself in the index would otherwise retrieve only itself."""
        k = min(INDEX_NEIGHBOURS, len(self.vectors))
        search_k = min(k + 1, len(self.vectors)) if exclude_exact else k
        dist, ids = self.index.search(np.ascontiguousarray(features, dtype=np.float32), search_k)
        valid = ids >= 0  # faiss pads missing neighbours with id -1 and a huge distance
        if exclude_exact:
            valid &= dist > 1e-6
        valid &= np.cumsum(valid, axis=1) <= k
        safe = np.where(valid, np.maximum(dist.astype(np.float64), 1e-12), 1.0)
        weights = np.where(valid, 1.0 / np.square(safe), 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights /= np.maximum(total, 1e-300)
        retrieved = np.einsum("tk,tkd->td", weights, self.vectors[np.maximum(ids, 0)])
        # A frame with no usable neighbour keeps its own features.
        retrieved = np.where(total > 0, retrieved, features)
        return (rate * retrieved + (1.0 - rate) * features).astype(np.float32)


def convert(
    generator: object,
    features_50fps: np.ndarray,
    f0_hz: np.ndarray,
    *,
    index: RetrievalIndex | None = None,
    index_rate: float = DEFAULT_INDEX_RATE,
    exclude_exact: bool = False,
    speaker_id: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Runs the generator on one utterance and returns mono float32 audio at its sample rate."""
    import torch

    from rvc_core.pitch import coarse_pitch

    feats = (
        index.blend(features_50fps, index_rate) if index is not None and index_rate > 0 else features_50fps
    )
    feats = np.repeat(feats, 2, axis=0)  # 50 → 100 frames/s
    frames = min(len(feats), len(f0_hz))
    feats, f0 = feats[:frames], f0_hz[:frames].astype(np.float32)
    g = generator
    with torch.no_grad():
        phone = torch.from_numpy(feats).unsqueeze(0).to(device)
        lengths = torch.tensor([frames], device=device)
        sid = torch.tensor([speaker_id], device=device)
        if getattr(g, "f0", True):
            pitch = torch.from_numpy(coarse_pitch(f0)).long().unsqueeze(0).to(device)
            pitchf = torch.from_numpy(f0).unsqueeze(0).to(device)
        else:
            pitch = pitchf = None
        audio = g.infer(phone, lengths, pitch, pitchf, sid)  # type: ignore[attr-defined]
    return audio.squeeze().float().clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
