"""The model-name rule: what a model may be called, and how any string becomes such a name.

One rule for the library (`JobSpec`), the services (metadata, `GET /models/<name>`, the client) and
the dead-letter function, whose deploy archive carries this file (functions/dead_letter/ARCHIVE):
so it imports nothing but the standard library.
"""

from __future__ import annotations

import re

# A name becomes file and folder names (`<name>.pth`, `MODELS/<name>/`), so only these characters.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODEL_NAME_ACCEPTED = "1 to 64 characters from A-Z a-z 0-9 _ -"


def is_model_name(value: str) -> bool:
    """Whether `value` is a valid model name (the whole string: `$` alone lets a trailing newline in)."""
    return MODEL_NAME.fullmatch(value) is not None


def sanitise_model_name(raw: str) -> str:
    """Any string → `[A-Za-z0-9_-]{1,64}` (runs of other characters become one `_`; empty → `model`)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")[:64]
    return name or "model"
