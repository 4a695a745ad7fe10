"""`POST /events`: any upload-notification delivery → intake. Always 2xx for what cannot succeed
later (ignored or malformed deliveries, bad metadata): Pub/Sub would redeliver a 4xx for days. The one
exception: with REQUIRE_PUSH_IDENTITY, a push without the expected identity is answered 401/403 (a
misconfiguration, retried until it is fixed; consumer.edge.identity)."""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from consumer.edge.deliveries import Ignored, parse_delivery
from consumer.edge.identity import IdentityVerifier, check_events
from consumer.logs import log
from consumer.services import Services

logger = logging.getLogger(__name__)


def handle(services: Services, identity: IdentityVerifier | None = None) -> tuple[Response, int]:
    refused = check_events(identity, services.settings)  # REQUIRE_PUSH_IDENTITY: PUSH_SERVICE_ACCOUNT only
    if refused is not None:
        return refused
    delivery = parse_delivery(dict(request.headers), request.get_data(cache=True, parse_form_data=False))
    if isinstance(delivery, Ignored):
        services.counters["malformed_deliveries" if delivery.malformed else "ignored_deliveries"] += 1
        level = logging.WARNING if delivery.malformed else logging.INFO
        log(logger, level, f"delivery ignored: {delivery.reason}", malformed=delivery.malformed)
        return jsonify(outcome="ignored", reason=delivery.reason), 200
    assert services.intake is not None  # the route exists for roles all and api only
    result = services.intake.accept_upload(delivery)
    if result.outcome == "ignored":
        services.counters["ignored_deliveries"] += 1
        log(logger, logging.INFO, f"delivery ignored: {result.reason}")
    # "busy": a duplicate of this delivery is being handled right now; Pub/Sub retries this one later.
    return jsonify(result.as_json()), 503 if result.outcome == "busy" else 200
