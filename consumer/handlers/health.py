"""`GET /healthz`: the process is up; counts of ignored and malformed deliveries since start."""

from __future__ import annotations

from flask import Response, jsonify

from consumer.services import Services


def handle(services: Services) -> tuple[Response, int]:
    status = "stopping" if services.stop.is_set() else "ok"
    return jsonify(status=status, counters=dict(services.counters)), 200
