"""Retry policies for network calls, and the one place that decides what counts as transient.

Transient = worth trying again unchanged: HTTP 429 and 5xx (but 501), gRPC UNAVAILABLE,
DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, connection failures and timeouts. Everything else (400,
403, 404, 412, a bad argument) fails at once: retrying would only repeat it more slowly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
_TRANSIENT_EXCEPTION_NAMES = frozenset(
    {
        # requests / urllib3 / http.client failures that are not builtin ConnectionError subclasses
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        "RemoteDisconnected",
        "TransportError",  # google.auth.exceptions.TransportError
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in all, the first included
    first_wait: float = 0.2  # seconds before the second try; doubles (with jitter) after that
    max_wait: float = 4.0  # seconds between two tries at most
    deadline: float = 30.0  # seconds for all tries together; no try starts after it
    call_timeout: float = 10.0  # seconds one try may take (also cut to what is left of the deadline)


STORAGE_POLICY = RetryPolicy()
# A publish sits on the request path (the next work token goes out before the ack): fail within seconds.
PUBLISH_POLICY = RetryPolicy(attempts=5, first_wait=0.2, max_wait=2.0, deadline=8.0, call_timeout=5.0)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (google.api_core errors, storage InvalidResponse)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def grpc_status_name(exc: BaseException) -> str | None:
    status = getattr(exc, "grpc_status_code", None)  # google.api_core errors raised from gRPC
    if status is None and callable(getattr(exc, "code", None)):
        try:
            status = exc.code()  # a raw grpc.RpcError
        except Exception:
            return None
    return getattr(status, "name", None)


def is_transient(exc: BaseException) -> bool:
    """True when the same call, repeated unchanged a little later, may well succeed."""
    if getattr(exc, "retryable", False) is True:  # our own errors say so themselves
        return True
    # google.api_core errors carry both an HTTP code and a gRPC status (a class default for errors
    # that came over HTTP: a 500 says INTERNAL), so either one being transient is enough.
    status, name = http_status(exc), grpc_status_name(exc)
    if status is not None and (status == 429 or (500 <= status <= 599 and status != 501)):
        return True
    if name in _TRANSIENT_GRPC:
        return True
    if status is not None or name is not None:
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if any(cls.__name__ in _TRANSIENT_EXCEPTION_NAMES for cls in type(exc).__mro__):
        return True
    # google.api_core's RetryError (its own retry gave up) is as transient as the failure it wraps
    cause = getattr(exc, "cause", None) if type(exc).__name__ == "RetryError" else None
    return isinstance(cause, BaseException) and cause is not exc and is_transient(cause)


def call_with_retry(fn: Callable[[float], T], policy: RetryPolicy, *, what: str) -> T:
    """Calls `fn(timeout_seconds)` until it returns, retrying transient failures within `policy`.

    The last exception is re-raised unchanged when the policy gives up or the failure is permanent;
    callers translate it into their own error type.
    """
    started = time.monotonic()

    def attempt() -> T:
        left = policy.deadline - (time.monotonic() - started)
        return fn(max(0.5, min(policy.call_timeout, left)))

    def note_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "transient failure, retrying",
            extra={"fields": {"what": what, "attempt": state.attempt_number, "error": repr(exc)}},
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_before_delay(policy.deadline),
        wait=tenacity.wait_exponential_jitter(initial=policy.first_wait, max=policy.max_wait, jitter=0.1),
        before_sleep=note_retry,
        reraise=True,
    )
    return retrying(attempt)
