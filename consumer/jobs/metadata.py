"""Object metadata (or a `/train` body) → the `JobSpec` to train with.

Keys are case-insensitive and `-`/`_` alike (`Model-Name`, `model_name`); a few other trainers'
names are accepted as aliases. A bad value raises `InvalidMetadata` naming the field and the
accepted range; keys we do not know are returned so the `accepted` event can list them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from consumer.errors import InvalidMetadata
from consumer.jobs.uploads import MODEL_NAME_KEYS, default_model_name, normalise_key
from rvc_core.errors import ConfigError
from rvc_core.names import MODEL_NAME_ACCEPTED, is_model_name
from rvc_core.spec import F0_METHODS, SAMPLE_RATES, VERSIONS

MetadataKey = Literal[
    "model_name",
    "epochs",
    "sample_rate",
    "version",
    "f0_method",
    "batch_size",
    "save_every",
    "author",
    "base_model",
]

# Normalised spelling (lower case, `-` → `_`) → field. Includes RVC WebUI's and Applio's names.
# The model name's keys are part of the model-name rule (consumer.jobs.uploads).
ALIASES: dict[str, MetadataKey] = {
    **dict.fromkeys(MODEL_NAME_KEYS, "model_name"),
    "epochs": "epochs",
    "epoch": "epochs",
    "total_epoch": "epochs",
    "total_epochs": "epochs",
    "sample_rate": "sample_rate",
    "samplerate": "sample_rate",
    "sr": "sample_rate",
    "version": "version",
    "model_version": "version",
    "f0_method": "f0_method",
    "f0method": "f0_method",
    "pitch_method": "f0_method",
    "batch_size": "batch_size",
    "batchsize": "batch_size",
    "save_every": "save_every",
    "save_every_epoch": "save_every",
    "author": "author",
    # Continue training from the latest success of another model (resolved at intake).
    "base_model": "base_model",
    "basemodel": "base_model",
    "continue_from": "base_model",
}

MAX_EPOCHS = 2000


@dataclass(frozen=True)
class Rule:
    parse: Callable[[str], Any]  # raises ValueError on a value outside `accepted`
    accepted: str  # for humans, in the error message


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def _sample_rate(raw: str) -> int:
    text = raw.lower().removesuffix("hz")
    value = int(text[:-1]) * 1000 if text.endswith("k") else int(text)
    if value not in SAMPLE_RATES:
        raise ValueError(raw)
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ValueError(raw)
        return value

    return parse


def _model_name(raw: str) -> str:
    if not is_model_name(raw):
        raise ValueError(raw)
    return raw


def _author(raw: str) -> str:
    if not 1 <= len(raw) <= 128 or not raw.isprintable():
        raise ValueError(raw)
    return raw


RULES: dict[MetadataKey, Rule] = {
    "model_name": Rule(_model_name, MODEL_NAME_ACCEPTED),
    "epochs": Rule(_integer(1, MAX_EPOCHS), f"an integer from 1 to {MAX_EPOCHS}"),
    "sample_rate": Rule(_sample_rate, "one of 32000, 40000, 48000 (or 32k, 40k, 48k)"),
    "version": Rule(_choice(VERSIONS), "v1 or v2"),
    "f0_method": Rule(_choice(F0_METHODS), f"one of {', '.join(F0_METHODS)}"),
    "batch_size": Rule(_integer(1, 256), "an integer from 1 to 256"),
    "save_every": Rule(_integer(1, MAX_EPOCHS), f"an integer from 1 to {MAX_EPOCHS}"),
    "author": Rule(_author, "1 to 128 printable characters"),
    "base_model": Rule(_model_name, f"the name of a model trained here before ({MODEL_NAME_ACCEPTED})"),
}


@dataclass(frozen=True)
class RequestedSpec:
    """What an upload asked for: the spec fields, and the keys we did not recognise."""

    fields: dict[str, Any]  # JobSpec keyword arguments
    unknown_keys: tuple[str, ...]


def requested_spec(metadata: Mapping[str, Any], *, object_name: str) -> RequestedSpec:
    """Parses every known key; raises `InvalidMetadata` on the first bad value (in a stable order)."""
    given: dict[MetadataKey, tuple[str, str]] = {}  # field → (key as written, value)
    unknown: list[str] = []
    for key, value in metadata.items():
        target = ALIASES.get(normalise_key(str(key)))
        if target is None:
            unknown.append(str(key))
            continue
        text = str(value).strip()
        if target in given and given[target][1] != text:
            raise InvalidMetadata(
                f"{key}: given twice with different values "
                f"({given[target][0]}={given[target][1]!r}, {key}={text!r})",
                field=str(key),
                accepted=RULES[target].accepted,
            )
        given[target] = (str(key), text)
    fields: dict[str, Any] = {}
    for target, rule in RULES.items():
        if target not in given:
            continue
        key, text = given[target]
        try:
            fields[target] = rule.parse(text)
        except ValueError:
            raise InvalidMetadata(
                f"{key} must be {rule.accepted}, got {text!r}", field=key, accepted=rule.accepted
            ) from None
    fields.setdefault("model_name", default_model_name(object_name))
    return RequestedSpec(fields=fields, unknown_keys=tuple(sorted(unknown)))


def build_job_spec(fields: Mapping[str, Any], *, preset: str) -> Any:
    """`JobSpec(**fields, preset=…)`; a combination the pipeline refuses becomes `InvalidMetadata`."""
    from rvc_core.jobspec import JobSpec

    try:
        return JobSpec(**{**fields, "preset": preset})
    except ConfigError as err:
        raise InvalidMetadata(err.message, field="metadata", accepted="values the pipeline accepts") from None
