"""Configuration dataclasses. Field metadata carries the help text the CLI shows (`cli_options`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rvc_core.errors import ConfigError
from rvc_core.spec import F0_METHODS, SAMPLE_RATES, VERSIONS


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that changes what `prepare` writes. A work dir is bound to one of these."""

    sample_rate: int = field(
        default=40000, metadata={"help": "target sample rate in Hz: 32000, 40000 or 48000"}
    )
    version: str = field(
        default="v2", metadata={"help": "RVC model version: v2 (768-d features) or v1 (256-d)"}
    )
    f0_method: str = field(
        default="rmvpe", metadata={"help": "pitch method: rmvpe, crepe, crepe-tiny, pm or harvest"}
    )
    segment_seconds: float = field(default=3.7, metadata={"help": "training segment length in seconds"})

    def __post_init__(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ConfigError(
                f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}, got {self.sample_rate}"
            )
        if self.version not in VERSIONS:
            raise ConfigError(f"version must be v2 or v1, got {self.version!r}")
        if self.f0_method not in F0_METHODS:
            raise ConfigError(f"f0_method must be one of {', '.join(F0_METHODS)}, got {self.f0_method!r}")
        if not 1.0 <= self.segment_seconds <= 30.0:
            raise ConfigError(f"segment_seconds must be between 1 and 30, got {self.segment_seconds}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(obj: Any) -> str:
    """A short stable hash of a dataclass (or dict) of plain values."""
    payload = asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
