"""Service-side errors. Each has a stable `code`; pipeline errors keep their `rvc_core.errors` codes.

They subclass `RvcError` so one `except RvcError` and one `as_dict()` cover the whole failure
report (`{stage, code, message, retryable}`) that travels into the `failed` CloudEvent.
"""

from __future__ import annotations

from rvc_core.errors import RvcError


class ConsumerError(RvcError):
    code = "consumer_error"


# --- storage --------------------------------------------------------------------------------------
class StorageError(ConsumerError):
    code = "storage_error"


class NotFound(StorageError):
    """The object does not exist (HTTP 404)."""

    code = "not_found"


class PreconditionFailed(StorageError):
    """A compare-and-swap lost: the object's generation was not the one expected (HTTP 412)."""

    code = "precondition_failed"


class TransientStorageError(StorageError):
    """Storage kept answering 429/5xx or was unreachable after every retry; trying later may work."""

    code = "storage_unavailable"
    retryable = True


# --- messaging ------------------------------------------------------------------------------------
class MessagingError(ConsumerError):
    code = "messaging_error"


class PublishFailed(MessagingError):
    """A message could not be published. Retryable unless the cause was permanent (a missing topic)."""

    code = "publish_failed"
    retryable = True

    def __init__(self, message: str, *, stage: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, stage=stage)
        self.retryable = retryable
