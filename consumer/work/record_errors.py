"""The `error` a job record carries (and its events repeat): stage, code, message, and whether the
job may still succeed on a later slice."""

from __future__ import annotations

from typing import Any

from rvc_core.errors import RvcError


def record_error(stage: str | None, code: str, message: str, retryable: bool) -> dict[str, Any]:
    return {"stage": stage, "code": code, "message": message, "retryable": retryable}


def record_error_of(err: RvcError, stage: str | None) -> dict[str, Any]:
    """An error of the training library; `stage` (the record's) where the error names none."""
    return record_error(err.stage or stage, err.code, err.message, err.retryable)
