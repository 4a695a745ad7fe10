"""Cloud Storage for the client (google-cloud-storage; fake-gcs-server via STORAGE_EMULATOR_HOST):
the upload, job records in the state bucket, and the model files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from consumer.adapters.storage.gcs import default_client, parse_gs_uri
from consumer.jobs.records import job_id_for, source_key

TIMEOUT_SECONDS = 120.0
ZIP_CONTENT_TYPE = "application/zip"


@dataclass(frozen=True)
class Upload:
    bucket: str
    name: str
    generation: int

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    @property
    def job_id(self) -> str:
        """The job the service makes of this upload (`bucket/object#generation`, hashed)."""
        return job_id_for(source_key(self.bucket, self.name, self.generation))


def destination(inbox: str, local: Path, object_name: str | None) -> tuple[str, str]:
    """(bucket, object name) as `gcloud storage cp FILE INBOX` would pick them: a URL ending in `/`
    (or a bare bucket) is a folder, the file keeps its name (or `object_name`)."""
    bucket, name = parse_gs_uri(inbox)
    if not name or name.endswith("/"):
        name = f"{name}{object_name or local.name}"
    elif object_name:
        raise ValueError("--object-name needs an inbox URL ending in '/'")
    return bucket, name


def upload(client: Any, local: Path, bucket: str, name: str, metadata: Mapping[str, str]) -> Upload:
    """Uploads `local` with custom metadata exactly as `gcloud storage cp --custom-metadata` sets it
    (keys as given, string values) and content type application/zip; returns the generation."""
    blob = client.bucket(bucket).blob(name)
    blob.metadata = {str(k): str(v) for k, v in metadata.items()}
    blob.upload_from_filename(str(local), content_type=ZIP_CONTENT_TYPE, timeout=TIMEOUT_SECONDS)
    return Upload(bucket, name, int(blob.generation))


def storage_client() -> Any:
    return default_client()


def read_record(client: Any, state_url: str, job_id: str) -> dict[str, Any] | None:
    """`jobs/<job_id>/job.json` from the state bucket, or None."""
    from google.api_core.exceptions import NotFound

    bucket, prefix = parse_gs_uri(state_url.rstrip("/") + "/")
    try:
        data = client.bucket(bucket).blob(f"{prefix}jobs/{job_id}/job.json").download_as_bytes(timeout=30)
    except NotFound:
        return None
    return dict(json.loads(data))


def list_records(client: Any, state_url: str, model: str | None = None) -> list[dict[str, Any]]:
    """Every job record under the state URL (of one model name), oldest first."""
    bucket, prefix = parse_gs_uri(state_url.rstrip("/") + "/")
    records = []
    # The glob spares listing stage outputs and checkpoints; the name check below still applies.
    blobs = client.list_blobs(
        bucket, prefix=f"{prefix}jobs/", match_glob=f"{prefix}jobs/*/job.json", timeout=60
    )
    for blob in blobs:
        rest = blob.name[len(prefix) + len("jobs/") :]
        if rest.count("/") != 1 or not rest.endswith("/job.json"):
            continue  # stage outputs, checkpoints
        record = json.loads(blob.download_as_bytes(timeout=30))
        if model is None or record.get("model_name") == model:
            records.append(record)
    return sorted(records, key=lambda r: (str(r.get("created_at", "")), str(r.get("job_id", ""))))


def download(client: Any, uri: str, directory: Path) -> Path:
    """One artifact (gs:// or file://) into `directory`, keeping its file name."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = urlsplit(uri)
    target = directory / Path(parts.path).name
    if parts.scheme == "file":
        shutil.copyfile(parts.path, target)
        return target
    bucket, name = parse_gs_uri(uri)
    partial = target.with_name(target.name + ".part")
    client.bucket(bucket).blob(name).download_to_filename(str(partial), timeout=TIMEOUT_SECONDS)
    partial.replace(target)
    return target
