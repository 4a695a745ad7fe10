"""Content features: HuBERT-base / ContentVec on 16 kHz audio (RVC.md §4).

`hubert` builds the network, `weights` loads the two weight formats strictly, `extract` runs it in
batches. Importing this package does not import torch.
"""

from rvc_core.features.extract import ContentEncoder, content_frames, load_content_encoder

__all__ = ["ContentEncoder", "content_frames", "load_content_encoder"]
