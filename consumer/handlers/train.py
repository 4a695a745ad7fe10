"""`POST /train`: the original server's JSON API, `{dataset_url, output_url, model_name, epochs, …}`,
answered `202 {"job_id", "status_url"}`; the job then runs exactly like an uploaded one."""

from __future__ import annotations

from flask import Response, jsonify, request, url_for

from consumer.errors import BUSY, INVALID_REQUEST, NotFound
from consumer.services import Services

REJECTION_STATUS: dict[str, int] = {NotFound.code: 404}


def handle(services: Services) -> tuple[Response, int]:
    if request.mimetype != "application/json":
        got = request.mimetype or "none"
        message = f"the body must be JSON sent with Content-Type: application/json, got {got!r}"
        return jsonify(error={"code": INVALID_REQUEST, "message": message}), 400
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body.get("dataset_url"):
        message = "the body must be a JSON object with at least dataset_url"
        return jsonify(error={"code": INVALID_REQUEST, "message": message}), 400
    assert services.intake is not None  # the route exists for roles all and api only
    result = services.intake.accept_request(body)
    if result.outcome == "rejected":
        error = result.error or {"code": INVALID_REQUEST, "message": result.reason}
        return jsonify(error=error), REJECTION_STATUS.get(str(error.get("code")), 400)
    if result.outcome == "busy":
        return jsonify(error={"code": BUSY, "message": result.reason}), 503
    status_url = url_for("job", job_id=result.job_id, _external=False)
    return jsonify(job_id=result.job_id, status_url=status_url, outcome=result.outcome), 202
