"""The api service over HTTP: `GET /jobs/<id>` and `POST /jobs/<id>:cancel`.

On Google Cloud the api service is private: each request carries an ID token for the service URL
(google.oauth2.id_token.fetch_id_token: a service account or the metadata server; with a user's
gcloud login, `gcloud auth print-identity-token`). Against the dev stack nothing is attached.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT_SECONDS = 30.0


class ServiceError(Exception):
    """The service could not be reached, or answered what the client cannot use."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def id_token(audience: str) -> str:
    """An ID token whose audience is the service URL."""
    import google.auth.transport.requests
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import id_token as google_id_token

    try:
        return str(google_id_token.fetch_id_token(google.auth.transport.requests.Request(), audience))
    except (DefaultCredentialsError, ValueError) as err:
        first = err
    try:  # user credentials cannot mint ID tokens for an audience; gcloud's login can mint one
        done = subprocess.run(
            ["gcloud", "auth", "print-identity-token"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    raise ServiceError(f"no ID token for {audience}: {first}")


class Service:
    def __init__(self, base_url: str, *, authenticate: bool, timeout: float = TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.authenticate = authenticate
        self.timeout = timeout
        self._token: str | None = None

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job record (with `queue` while queued), or None when the service knows no such job."""
        answer = self._request("GET", f"/jobs/{job_id}")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise ServiceError(f"GET /jobs/{job_id} answered {answer.status}: {_message(answer.body)}")
        return answer.body

    def cancel(self, job_id: str) -> Answer:
        return self._request("POST", f"/jobs/{job_id}:cancel")

    def _request(self, method: str, path: str) -> Answer:
        headers = {"Accept": "application/json"}
        if self.authenticate:
            self._token = self._token or id_token(self.base_url)
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self.base_url + path, method=method, headers=headers, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, _json(response.read()))
        except urllib.error.HTTPError as err:
            return Answer(err.code, _json(err.read()))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ServiceError(f"{method} {self.base_url}{path}: {reason}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": {"code": "not_json", "message": raw[:200].decode("utf-8", "replace")}}
    return value if isinstance(value, dict) else {"value": value}


def _message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}"
    return json.dumps(body)[:200]
