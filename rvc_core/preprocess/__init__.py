"""Preprocessing with RVC's numbers: decoded files become normalised training segments at the target
rate and at 16 kHz, with per-file statistics and every dropped chunk reported (RVC.md §2).

Modules: `filters` (downmix, resample, high-pass), `framing` (frame energies), `slicer` (silence
slicing), `segmenter` (chunks and normalisation), `stats` (file statistics), `writer` (cutting and
writing), `runner` (one file, and all files in worker processes).
"""

from rvc_core.preprocess.records import DroppedChunk, FileStats, Segment
from rvc_core.preprocess.runner import preprocess_all, preprocess_file

__all__ = ["DroppedChunk", "FileStats", "Segment", "preprocess_all", "preprocess_file"]
