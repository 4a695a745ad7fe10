"""`GET /models/<name>`: a model's jobs, newest first, with the one `latest.json` points at marked.

JSON by default, a page for a browser. There is no index of jobs by model yet, so the jobs are
gathered from what names them: the job folders under `MODELS/<name>/` (every succeeded job), the
state bucket's `models/<name>/newest.json` (the newest upload, whatever its status), and, when the
intake writes it, a per-model index `STATE/models/<name>/jobs/<created_at>_<job_id>` (empty markers,
like the waiting line's), which also lists failed and superseded jobs.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, jsonify, request

from consumer.handlers import pages
from consumer.handlers.jobs import JOB_ID
from consumer.jobs.records import JobRecord
from consumer.services import Services
from consumer.work.artifacts import latest_uri, read_latest
from rvc_core.names import is_model_name

MAX_JOBS = 100  # the newest this many are shown
TRAILING_JOB_ID = re.compile(r"([0-9a-f]{16})$")


def handle(services: Services, name: str) -> tuple[Response, int]:
    html = pages.wants_html(request)
    latest = _latest(services, name) if is_model_name(name) else None
    records = _records(services, name) if is_model_name(name) else []
    if latest is None and not records:
        if html:
            return pages.render("not_found.html", 404, what=f"model {name}")
        return pages.vary(jsonify(error={"code": "not_found", "message": f"no model {name}"})), 404
    latest_id = (latest or {}).get("job_id")
    jobs = [_summary(r, r.job_id == latest_id) for r in records]
    if not html:
        return pages.vary(jsonify(model_name=name, latest=latest, jobs=jobs)), 200
    return pages.render("model.html", 200, name=name, latest=latest, jobs=jobs)


def job_ids(services: Services, name: str) -> set[str]:
    """Every job of the model that some object names (see the module's doc)."""
    settings = services.settings
    ids: set[str] = set()
    folder = f"{settings.models_url}/{name}/"
    for info in services.store_for(folder).list(folder):
        first = info.uri[len(folder) :].split("/", 1)[0]
        if JOB_ID.match(first):
            ids.add(first)
    index = f"{settings.state_url}/models/{name}/jobs/"
    for info in services.store_for(index).list(index):
        found = TRAILING_JOB_ID.search(info.uri)
        if found:
            ids.add(found.group(1))
    newest = services.records.newest(name)
    if newest and JOB_ID.match(str(newest.get("job_id", ""))):
        ids.add(newest["job_id"])
    return ids


def _records(services: Services, name: str) -> list[JobRecord]:
    found = [services.records.get(job_id) for job_id in sorted(job_ids(services, name))]
    records = [r for r in found if r is not None and r.model_name == name]
    records.sort(key=lambda r: (r.created_at, r.source.generation, r.job_id), reverse=True)
    return records[:MAX_JOBS]


def _latest(services: Services, name: str) -> dict[str, Any] | None:
    uri = latest_uri(services.settings.models_url, name)
    return read_latest(services.store_for(uri), uri)[0]


def _summary(record: JobRecord, latest: bool) -> dict[str, Any]:
    progress = record.progress or {}
    return {
        "job_id": record.job_id,
        "url": f"/jobs/{record.job_id}",
        "status": record.status,
        "stage": record.stage,
        "latest": latest,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs") or (record.spec or {}).get("epochs"),
        "best_validation_mel": (record.metrics or {}).get("best_validation_mel"),
        "error": record.error,
        "source": record.source.uri,
    }
