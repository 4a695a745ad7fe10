"""`POST /work`: one slice of one job, delivered by the task queue. Any answer but 2xx (429, 503)
makes the queue retry the task later, without counting it against the job."""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from consumer.edge.identity import IdentityVerifier, check_work
from consumer.handlers.jobs import JOB_ID
from consumer.logs import log
from consumer.services import Services
from consumer.work.tokens import read_work_delivery

logger = logging.getLogger(__name__)


def handle(services: Services, identity: IdentityVerifier | None = None) -> tuple[Response, int]:
    refused = check_work(identity, services.settings)  # REQUIRE_PUSH_IDENTITY: TASKS_SERVICE_ACCOUNT only
    if refused is not None:
        return refused
    token = read_work_delivery(request.get_data(cache=True, parse_form_data=False))
    if isinstance(token, str):
        services.counters["malformed_tokens"] += 1
        log(logger, logging.WARNING, f"work delivery dropped: {token}")
        return jsonify(outcome="malformed", detail=token), 200
    if not JOB_ID.match(token.job_id):
        services.counters["malformed_tokens"] += 1
        log(logger, logging.WARNING, "work delivery dropped: not a job id")
        return jsonify(outcome="malformed", detail="not a job id"), 200
    assert services.slices is not None  # the route exists for roles all and worker only
    answer = services.slices.run(token)
    response = jsonify(answer.as_json())
    if answer.http_status == 429:
        response.headers["Retry-After"] = "10"
    return response, answer.http_status
