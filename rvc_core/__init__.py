"""rvc_core: the pure RVC training library (local paths in, local paths out)."""

__version__ = "0.1.0"
