"""`GET /jobs/<job_id>`: the job record as stored; a waiting job also shows its place in the queue."""

from __future__ import annotations

import re

from flask import Response, jsonify

from consumer.services import Services

JOB_ID = re.compile(r"^[0-9a-f]{16}$")


def handle(services: Services, job_id: str) -> tuple[Response, int]:
    record = services.records.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        return jsonify(error={"code": "not_found", "message": f"no job {job_id}"}), 404
    body = record.to_json()
    if record.status == "queued":
        position = services.line.position(record)
        body["queue"] = position.as_json() if position else None
    return jsonify(body), 200
