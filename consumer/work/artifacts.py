"""A finished job's model files → `MODELS/<model>/<job_id>/…`, `MODELS/<model>/latest.json` and the
`/train` caller's `output_url`.

The files include the checkpoint pair `G_<n>.pth` / `D_<n>.pth` (artifact keys `G`, `D`): RVC's
training format, which RVC WebUI and Applio take as custom pretrained files and which a later job's
`base-model=<model>` continues from (intake reads `latest.json`'s `artifacts.G/D` and `spec`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.errors import NotFound, PreconditionFailed

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from consumer.jobs.records import JobRecord

CONTENT_TYPES: dict[str, str] = {
    ".zip": "application/zip",
    ".json": "application/json",
    ".wav": "audio/wav",
    ".png": "image/png",
    ".pth": "application/octet-stream",
    ".index": "application/octet-stream",
}
# The spec fields `latest.json` repeats: a `base-model` job must have the same.
BASE_SPEC_KEYS = ("sample_rate", "version", "preset")
LATEST_ATTEMPTS = 10  # compare-and-swap tries on latest.json before leaving it to the newer writer


def publish_artifacts(
    store_for: Callable[[str], ObjectStore], models_url: str, record: JobRecord, files: Mapping[str, Path]
) -> dict[str, str]:
    """Uploads the model files to `MODELS/<model>/<job_id>/`, points `MODELS/<model>/latest.json` at
    them unless a newer upload already succeeded, and writes the `/train` caller's `output_url`."""
    base = f"{models_url}/{record.model_name}/{record.job_id}"
    store = store_for(models_url)
    uris: dict[str, str] = {}
    for kind, path in sorted(files.items()):
        uri = f"{base}/{Path(path).name}"
        store.upload_file(Path(path), uri, content_type=CONTENT_TYPES.get(Path(path).suffix))
        uris[kind] = uri
    point_latest(store, latest_uri(models_url, record.model_name), record, uris)
    if record.output_url:
        uris.update(copy_to_output(store_for(record.output_url), record.output_url, files))
    return uris


def latest_uri(models_url: str, model_name: str) -> str:
    return f"{models_url}/{model_name}/latest.json"


def read_latest(store: ObjectStore, uri: str) -> tuple[dict[str, Any] | None, int]:
    """`latest.json` and its generation (0: there is none). A file that is not a JSON object reads
    as None with its generation, so a writer can still replace it."""
    try:
        data, generation = store.read_bytes(uri)
    except NotFound:
        return None, 0
    try:
        latest = json.loads(data)
    except ValueError:
        return None, generation
    return (latest if isinstance(latest, dict) else None), generation


def point_latest(store: ObjectStore, uri: str, record: JobRecord, artifacts: dict[str, str]) -> None:
    """Points `latest.json` at this job's artifacts unless it names a newer upload already."""
    payload = json.dumps(
        {
            "job_id": record.job_id,
            "generation": record.source.generation,
            "source": record.source.uri,
            "artifacts": artifacts,
            # What a job continuing from this model (`base-model`) must agree with.
            "spec": {k: record.spec.get(k) for k in BASE_SPEC_KEYS},
        },
        indent=2,
        sort_keys=True,
    ).encode()
    for _ in range(LATEST_ATTEMPTS):
        current, generation = read_latest(store, uri)
        if current is not None and (int(current.get("generation", 0)), str(current.get("job_id", ""))) > (
            record.source.generation,
            record.job_id,
        ):
            return
        try:
            store.write_bytes(uri, payload, if_generation_match=generation, content_type="application/json")
            return
        except PreconditionFailed:
            continue


def with_report(
    files: dict[str, Path], dataset_report: dict[str, Any] | None, outdir: Path
) -> dict[str, Path]:
    """The model files plus `report.json` (the full dataset report), written when the trainer
    did not write one itself: events carry a summary and link to it."""
    if "report" not in files and dataset_report is not None:
        from rvc_core.atomic import write_json

        path = outdir / "report.json"
        write_json(path, {"dataset": dataset_report})
        files["report"] = path
    return files


def copy_to_output(store: ObjectStore, output_url: str, files: Mapping[str, Path]) -> dict[str, str]:
    """`…/name.zip` receives the model zip; any other URL is a folder receiving every file."""
    if output_url.lower().endswith(".zip"):
        if "zip" not in files:
            return {}
        store.upload_file(Path(files["zip"]), output_url, content_type="application/zip")
        return {"output": output_url}
    folder = output_url.rstrip("/")
    for path in files.values():
        store.upload_file(
            Path(path), f"{folder}/{Path(path).name}", content_type=CONTENT_TYPES.get(Path(path).suffix)
        )
    return {"output": folder + "/"}
