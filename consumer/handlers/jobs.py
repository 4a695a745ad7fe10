"""`GET /jobs/<job_id>`: the job record as stored; a waiting job also shows its place in the queue.

JSON by default; a browser (`Accept: text/html` preferred) gets the job page instead: status,
progress, loss curves, the dataset report, and when done the preview player and the downloads.
"""

from __future__ import annotations

import re

from flask import Response, jsonify, request

from consumer.handlers import pages
from consumer.services import Services

JOB_ID = re.compile(r"^[0-9a-f]{16}$")


def handle(services: Services, job_id: str) -> tuple[Response, int]:
    html = pages.wants_html(request)
    record = services.records.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        if html:
            return pages.render("not_found.html", 404, what=f"job {job_id}")
        return pages.vary(jsonify(error={"code": "not_found", "message": f"no job {job_id}"})), 404
    body = record.to_json()
    if record.status == "queued":
        position = services.line.position(record)
        body["queue"] = position.as_json() if position else None
    if not html:
        return pages.vary(jsonify(body)), 200
    files = pages.servable(services.settings.models_url, record)
    downloads, other_files = pages.artifact_links(record, files)
    preview = files.get("preview")
    return pages.render(
        "job.html",
        200,
        record=record,
        queue=body.get("queue"),
        refresh=None if record.is_final else pages.REFRESH_SECONDS,
        fraction=pages.progress_fraction(record),
        eta=pages.duration_text((record.progress or {}).get("eta_seconds")),
        charts=pages.loss_charts(record),
        dataset=pages.dataset_summary(record.dataset_report),
        downloads=downloads,
        other_files=other_files,
        preview_url=pages.file_url(record.job_id, preview) if preview else None,
        report_png_url=pages.file_url(record.job_id, files["report_png"]) if "report_png" in files else None,
        duration_text=pages.duration_text,
    )
