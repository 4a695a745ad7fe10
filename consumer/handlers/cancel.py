"""`POST /jobs/<job_id>:cancel`: stop a job.

A job no slice holds (queued, waiting its turn, between slices) is cancelled at once: `200`, its one
`cancelled` result published, its work files removed; its pending task then finds it final and is
dropped. A job a slice is running gets the cancel flag: `202`; the slice stops within seconds and
publishes `cancelled`. A finished job is a `409` naming its status; an unknown one a `404`. A
browser's form post (HTML preferred, or a form body) is redirected back to the job page (`303`).
"""

from __future__ import annotations

from flask import Request, Response, jsonify, redirect, request

from consumer.errors import NotFound
from consumer.handlers import pages
from consumer.handlers.jobs import JOB_ID
from consumer.jobs.results import Results
from consumer.services import Services
from consumer.work.finalise import Finaliser

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def handle(services: Services, job_id: str) -> tuple[Response, int] | Response:
    browser = from_browser(request)
    try:
        if not JOB_ID.match(job_id):
            raise NotFound(f"no job {job_id}")
        outcome, record = finaliser(services).cancel(job_id)
    except NotFound:
        if browser:
            return pages.render("not_found.html", 404, what=f"job {job_id}")
        return jsonify(error={"code": "not_found", "message": f"no job {job_id}"}), 404
    if browser:
        return redirect(f"/jobs/{job_id}", code=303)
    if outcome == "final":
        message = f"job {job_id} already {record.status}"
        return jsonify(error={"code": "already_final", "message": message}, status=record.status), 409
    body = {"job_id": job_id, "status": record.status, "outcome": outcome}
    if outcome == "cancelled":
        return jsonify({**body, "message": f"job {job_id} cancelled"}), 200
    message = f"cancel requested: job {job_id} stops at its running slice's next check (seconds)"
    return jsonify({**body, "message": message}), 202


def from_browser(request: Request) -> bool:
    """The job page's form: HTML preferred, or a form body from a client that does not prefer JSON
    (urllib sends a form content type with any POST body: `rvc-trainer cancel` asks for JSON)."""
    if pages.wants_html(request):
        return True
    accept = request.accept_mimetypes
    return request.mimetype in FORM_TYPES and not accept["application/json"] > accept["text/html"]


def finaliser(services: Services) -> Finaliser:
    results = services.intake.results if services.intake is not None else None
    if results is None:
        settings = services.settings
        results = Results(services.publisher, settings.results_topic, project=settings.project)
    return Finaliser(services.records, results, services.line, services.store_for)
