"""Service-side errors. Each has a stable `code`; pipeline errors keep their `rvc_core.errors` codes.

They subclass `RvcError` so one `except RvcError` and one `as_dict()` cover the whole failure
report (`{stage, code, message, retryable}`) that travels into the `failed` CloudEvent.
"""

from __future__ import annotations

from rvc_core.errors import ConfigError, RvcError


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


# --- the task queue ------------------------------------------------------------------------------
class TaskQueueError(ConsumerError):
    """A task could not be created. Retryable unless the cause was permanent (a missing queue)."""

    code = "task_queue_error"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- jobs and requests ----------------------------------------------------------------------------
class InvalidMetadata(ConfigError):
    """A metadata value outside its accepted range; `field` is the key as the user wrote it."""

    code = "invalid_metadata"

    def __init__(self, message: str, *, field: str, accepted: str) -> None:
        super().__init__(message, stage="intake")
        self.field = field
        self.accepted = accepted


class SettingsError(ConfigError):
    """The environment does not describe a runnable service."""

    code = "invalid_config"


class Superseded(ConsumerError):
    """A newer upload of the same model name replaced this job's; `newer_job` names its job if known."""

    code = "superseded"

    def __init__(self, message: str, newer_job: str | None) -> None:
        super().__init__(message)
        self.newer_job = newer_job


# Codes that travel in job records and answers but are never raised.
SLICE_LOST = "slice_lost"  # a slice's lease expired before it finished (the process died)
SLICE_FAILED = "slice_failed"  # a slice crashed (a bug, out of memory), or failed too often in a row
BUSY = "busy"  # another delivery or slice is handling this right now: try again later
INVALID_REQUEST = "invalid_request"  # a POST /train body that is not a training request
DATASET_TOO_LARGE = "dataset_too_large"  # an upload that cannot fit this service's scratch
UNAUTHENTICATED = "unauthenticated"  # a push without a token, or one that does not verify
FORBIDDEN = "forbidden"  # a valid token of another account than the expected pusher
IDENTITY_UNAVAILABLE = "identity_unavailable"  # Google's certificates could not be fetched
