"""`GET /jobs/<job_id>/files/<name>`: one of the job's own model files, read from the models bucket.

Only a file that the job record lists as an artifact *and* that lies in the job's own folder
(`MODELS/<model>/<job_id>/<name>`) is served; a name is matched against that list, never turned into
a path, so nothing else in any bucket can be reached. The `/train` caller's `output_url` copy is not
served. Needs read access to the models bucket (`roles/storage.objectViewer` on it for the api's
service account). `file://` objects are sent from their folder, `gs://` objects are copied to a
temporary file first and streamed from it; both answer range requests (the audio player seeks).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flask import Response, jsonify, request, send_file

from consumer.errors import NotFound
from consumer.handlers.jobs import JOB_ID
from consumer.handlers.pages import servable
from consumer.services import Services
from consumer.work.artifacts import CONTENT_TYPES

INLINE_SUFFIXES = (".wav", ".png", ".json")  # shown by the browser unless ?download=1


def handle(services: Services, job_id: str, name: str) -> tuple[Response, int] | Response:
    record = services.records.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        return jsonify(error={"code": "not_found", "message": f"no job {job_id}"}), 404
    uri = next(
        (u for u in servable(services.settings.models_url, record).values() if u.rsplit("/", 1)[-1] == name),
        None,
    )
    if uri is None:
        return jsonify(error={"code": "not_found", "message": f"job {job_id} has no file {name!r}"}), 404
    suffix = Path(name).suffix.lower()
    mimetype = CONTENT_TYPES.get(suffix, "application/octet-stream")
    attachment = request.args.get("download") == "1" or suffix not in INLINE_SUFFIXES
    if uri.startswith("file://"):
        from consumer.adapters.storage.local import path_from_uri

        path = path_from_uri(uri)
        if not path.is_file():
            return jsonify(error={"code": "not_found", "message": f"{name} is gone"}), 404
        response = _send(path, name, mimetype, attachment)
    else:
        folder = Path(tempfile.mkdtemp(prefix="rvc-file-"))
        try:
            path = folder / name
            services.store_for(uri).download_file(uri, path)
            response = _send(path, name, mimetype, attachment)
        except NotFound:
            shutil.rmtree(folder, ignore_errors=True)
            return jsonify(error={"code": "not_found", "message": f"{name} is gone"}), 404
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        response.call_on_close(lambda: shutil.rmtree(folder, ignore_errors=True))
    # A job's files never change once written: the browser may keep them.
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _send(path: Path, name: str, mimetype: str, attachment: bool) -> Response:
    return send_file(
        path, mimetype=mimetype, as_attachment=attachment, download_name=name, conditional=True, etag=True
    )
