"""The Flask app: routes, SIGTERM handling and the request's trace in every log line."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from flask import Flask, Response, g, jsonify, request

from consumer.edge.identity import IdentityVerifier
from consumer.handlers import cancel, events, files, health, jobs, models, train, work
from consumer.logs import log, reset_trace, set_trace
from consumer.services import Services

logger = logging.getLogger(__name__)


# The endpoints each role serves: `api` takes uploads and questions, `worker` runs slices.
API_ROLES = ("all", "api")
WORKER_ROLES = ("all", "worker")


def create_app(
    services: Services, *, handle_sigterm: bool = True, identity: IdentityVerifier | None = None
) -> Flask:
    """`identity` checks push tokens under REQUIRE_PUSH_IDENTITY (default: Google's certificates)."""
    app = Flask("consumer", template_folder="handlers/templates")
    role = services.settings.role
    if identity is None and services.settings.require_push_identity:
        identity = IdentityVerifier()
    if role in API_ROLES:
        app.add_url_rule("/events", "events", lambda: events.handle(services, identity), methods=["POST"])
        app.add_url_rule("/train", "train", lambda: train.handle(services), methods=["POST"])
        app.add_url_rule(
            "/jobs/<job_id>", "job", lambda job_id: jobs.handle(services, job_id), methods=["GET"]
        )
        app.add_url_rule(
            "/jobs/<job_id>:cancel",
            "cancel",
            lambda job_id: cancel.handle(services, job_id),
            methods=["POST"],
        )
        app.add_url_rule(
            "/jobs/<job_id>/files/<name>",
            "job_file",
            lambda job_id, name: files.handle(services, job_id, name),
            methods=["GET"],
        )
        app.add_url_rule(
            "/models/<name>", "model", lambda name: models.handle(services, name), methods=["GET"]
        )
    if role in WORKER_ROLES:
        app.add_url_rule("/work", "work", lambda: work.handle(services, identity), methods=["POST"])
    app.add_url_rule("/healthz", "healthz", lambda: health.handle(services), methods=["GET"])

    @app.before_request
    def _trace() -> None:
        g.trace_token = set_trace(request.headers.get("X-Cloud-Trace-Context"), services.settings.project)

    @app.teardown_request
    def _untrace(_exc: BaseException | None) -> None:
        if "trace_token" in g:
            reset_trace(g.trace_token)

    @app.errorhandler(Exception)
    def _failed(err: Exception) -> tuple[Response, int]:
        # Anything unexpected is answered 503: Pub/Sub (intake) and the task queue (work) retry it later.
        from werkzeug.exceptions import HTTPException

        if isinstance(err, HTTPException):
            return jsonify(error={"code": "http_error", "message": str(err)}), err.code or 500
        logger.exception("request failed", extra={"fields": {"path": request.path}})
        code = getattr(err, "code", "internal_error")
        return jsonify(
            error={"code": code if isinstance(code, str) else "internal_error", "message": str(err)}
        ), 503

    if handle_sigterm:
        install_sigterm_handler(services.stop)
    return app


def install_sigterm_handler(stop: threading.Event) -> None:
    """On SIGTERM, ask the running slice to stop at its next clean point, then let the previous
    handler (gunicorn's graceful shutdown) run. Only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        log(logger, logging.WARNING, "SIGTERM: stopping the current slice at a clean point")
        stop.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)


def create_app_from_env() -> Flask:
    """For `gunicorn "consumer.app:create_app_from_env()"`: settings from the environment, JSON logs."""
    from consumer.logs import configure_logging
    from consumer.services import build_services
    from consumer.settings import Settings

    configure_logging()
    return create_app(build_services(Settings.from_env()))
