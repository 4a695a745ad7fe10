"""Who may push: the OIDC token on `/events` (Pub/Sub or Eventarc) and `/work` (Cloud Tasks).

With `REQUIRE_PUSH_IDENTITY=true` (Terraform's default; off in the app so the local stack works) each
delivery must carry `Authorization: Bearer <Google-signed ID token>` whose signature verifies against
Google's certificates, whose issuer is Google, which has not expired, whose audience is the expected
one when we know it (`PUSH_AUDIENCE`; `TASKS_AUDIENCE` or `WORK_URL`'s origin), and whose verified
`email` is the expected pusher: `PUSH_SERVICE_ACCOUNT` for `/events`, `TASKS_SERVICE_ACCOUNT` for
`/work`. Cloud Run already checks signature and audience for a private service; this is the second
lock, and the only one that checks *which* account pushed.

A missing or invalid token is answered 401, a valid token of another account 403, each with a log
line. Pub/Sub and Cloud Tasks retry a non-2xx answer: a misconfigured identity delays deliveries
(and eventually dead-letters them) rather than dropping them silently. Google's certificates are
fetched once (with a timeout), cached for their `max-age`, and fetched again for an unknown key id;
when they cannot be fetched the answer is 503, so the delivery is retried.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Response, jsonify, request

from consumer.errors import FORBIDDEN, IDENTITY_UNAVAILABLE, UNAUTHENTICATED
from consumer.logs import log

logger = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CERTS_TIMEOUT_SECONDS = 10.0
CERTS_DEFAULT_TTL_SECONDS = 3600.0
CERTS_MIN_REFRESH_SECONDS = 60.0  # an unknown key id refetches at most this often
CLOCK_SKEW_SECONDS = 10


Certs = Mapping[str, str]  # key id → PEM certificate or public key


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


class CertsUnavailable(Exception):
    pass


def fetch_google_certs(
    url: str = GOOGLE_CERTS_URL, timeout: float = CERTS_TIMEOUT_SECONDS
) -> tuple[Certs, float]:
    """Google's current signing certificates and how long they may be cached, s."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            certs = json.loads(answer.read())
            max_age = re.search(r"max-age=(\d+)", answer.headers.get("Cache-Control", ""))
    except (OSError, ValueError) as err:
        raise CertsUnavailable(f"Google's certificates could not be fetched from {url}: {err}") from err
    return certs, float(max_age.group(1)) if max_age else CERTS_DEFAULT_TTL_SECONDS


class IdentityVerifier:
    """Verifies Google-signed ID tokens. `fetch_certs` returns `(certs, ttl_seconds)`; tests pass theirs."""

    def __init__(
        self,
        fetch_certs: Callable[[], tuple[Certs, float]] = fetch_google_certs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetch_certs = fetch_certs
        self.clock = clock
        self._lock = threading.Lock()
        self._certs: Certs = {}
        self._expires = 0.0
        self._fetched = float("-inf")

    def certs(self, *, need_kid: str | None = None) -> Certs:
        with self._lock:
            now = self.clock()
            stale = now >= self._expires
            unknown = need_kid is not None and need_kid not in self._certs
            if stale or (unknown and now - self._fetched >= CERTS_MIN_REFRESH_SECONDS):
                certs, ttl = self.fetch_certs()
                self._certs, self._expires, self._fetched = dict(certs), now + ttl, now
            return self._certs

    def check(
        self, authorization: str | None, *, expected_email: str, audience: str | None
    ) -> Refusal | None:
        """None when the header carries a valid token of `expected_email`; else why not."""
        from google.auth import exceptions, jwt

        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Refusal(401, UNAUTHENTICATED, "no `Authorization: Bearer <OIDC token>` header")
        token = token.strip()
        try:
            kid = jwt.decode_header(token).get("kid")
            certs = self.certs(need_kid=kid)
            claims = jwt.decode(
                token, certs=certs, audience=audience, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
            )
        except CertsUnavailable as err:
            return Refusal(503, IDENTITY_UNAVAILABLE, str(err))
        except (ValueError, TypeError, KeyError, exceptions.GoogleAuthError) as err:
            return Refusal(401, UNAUTHENTICATED, f"the OIDC token does not verify: {err}")
        if claims.get("iss") not in GOOGLE_ISSUERS:
            issuer = claims.get("iss")
            return Refusal(401, UNAUTHENTICATED, f"the OIDC token's issuer {issuer!r} is not Google")
        email = claims.get("email")
        if not email or claims.get("email_verified") is not True:
            return Refusal(403, FORBIDDEN, "the OIDC token carries no verified email")
        if email.lower() != expected_email.lower():
            message = f"the OIDC token is {email}'s, not the expected pusher {expected_email}"
            return Refusal(403, FORBIDDEN, message)
        return None


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def refuse_unless_pushed_by(
    verifier: IdentityVerifier, *, endpoint: str, expected_email: str, audience: str | None
) -> tuple[Response, int] | None:
    """The Flask answer refusing this request, or None when it carries the expected identity."""
    header = request.headers.get("Authorization")
    refusal = verifier.check(header, expected_email=expected_email, audience=audience)
    if refusal is None:
        return None
    level = logging.ERROR if refusal.status == 503 else logging.WARNING
    log(logger, level, f"{endpoint} refused: {refusal.message}", code=refusal.code, expected=expected_email)
    return jsonify(error={"code": refusal.code, "message": refusal.message}), refusal.status


def check_events(verifier: IdentityVerifier | None, settings: Any) -> tuple[Response, int] | None:
    if verifier is None or not settings.require_push_identity:
        return None
    return refuse_unless_pushed_by(
        verifier,
        endpoint="/events",
        expected_email=settings.push_service_account,
        audience=settings.push_audience or None,
    )


def check_work(verifier: IdentityVerifier | None, settings: Any) -> tuple[Response, int] | None:
    if verifier is None or not settings.require_push_identity:
        return None
    return refuse_unless_pushed_by(
        verifier,
        endpoint="/work",
        expected_email=settings.tasks_service_account,
        audience=settings.tasks_audience or origin(settings.work_url) or None,
    )
