"""`POST /work`: one slice of one job. The status tells Pub/Sub whether to redeliver (429/503)."""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from consumer.logs import log
from consumer.services import Services
from consumer.work.slices import read_work_delivery

logger = logging.getLogger(__name__)


def handle(services: Services) -> tuple[Response, int]:
    token = read_work_delivery(request.get_data(cache=True, parse_form_data=False))
    if isinstance(token, str):
        services.counters["malformed_tokens"] += 1
        log(logger, logging.WARNING, f"work delivery dropped: {token}")
        return jsonify(outcome="malformed", detail=token), 200
    answer = services.slices.run(token)
    response = jsonify(answer.as_json())
    if answer.http_status == 429:
        response.headers["Retry-After"] = "10"
    return response, answer.http_status
