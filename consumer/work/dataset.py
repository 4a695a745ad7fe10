"""A slice's inputs in its scratch folder: the upload (downloaded once per instance, removed once
rvc_core extracted its audio) and a `base-model` job's G/D pair.

The upload's generation is checked on download: a different one means a newer upload replaced it
(`Superseded`). A deleted upload or base model raises NotFound: a permanent failure of the job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from consumer.errors import Superseded
from consumer.jobs.records import JobRecord, job_id_for, source_key
from rvc_core.layout import WorkDir

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectStore
    from rvc_core.progress import ProgressEvent

DATASET_MARKER = "dataset.json"  # beside the job's work dir once the zip was extracted and removed


def download_dataset(
    store_for: Callable[[str], ObjectStore], record: JobRecord, path: Path, workdir: Path
) -> Path:
    """The upload, downloaded once per instance; a different generation means a newer upload.
    Not downloaded at all once the work dir holds its extracted audio (rvc_core's `extract`)."""
    if path.exists() or extracted(workdir):
        return path
    # A deleted upload raises NotFound: a permanent failure of this job.
    info = store_for(record.source.uri).download_file(record.source.uri, path)
    if info.generation != record.source.generation:
        path.unlink(missing_ok=True)
        newer = job_id_for(source_key(record.source.bucket, record.source.name, info.generation))
        raise Superseded(f"the upload was replaced by generation {info.generation}", newer)
    return path


def download_base_pair(
    store_for: Callable[[str], ObjectStore], record: JobRecord, folder: Path, workdir: Path
) -> tuple[str | None, str | None]:
    """`base-model`: local paths of the base model's G/D pair (resolved at intake), downloaded
    into this job's scratch once, and only while training has not started (a resumed run reads
    its own checkpoint; the paths still go to the trainer, whose config names them)."""
    spec = record.spec
    if not spec.get("base_g") or not spec.get("base_d"):
        return None, None
    paths = []
    for uri in (str(spec["base_g"]), str(spec["base_d"])):
        path = folder / uri.rstrip("/").rsplit("/", 1)[-1]
        if not path.exists() and not WorkDir(workdir).training_checkpoint.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            store_for(uri).download_file(uri, tmp)  # a deleted base: NotFound, permanent
            tmp.replace(path)
        paths.append(str(path))
    return paths[0], paths[1]


def dropping_upload(
    reporter: Callable[[ProgressEvent], None], record: JobRecord, dataset: Path, workdir: Path
) -> Callable[[ProgressEvent], None]:
    """The progress callback, which also drops the upload as soon as a stage after `extract` starts."""

    def progress(event: ProgressEvent) -> None:
        if event.stage != "extract" and dataset.exists():
            drop_extracted_upload(record, dataset, workdir)
        reporter(event)

    return progress


def drop_extracted_upload(record: JobRecord, dataset: Path, workdir: Path) -> None:
    """Once rvc_core extracted the zip's audio into the work dir, the zip is a second raw copy of
    the dataset in scratch (memory on Cloud Run): remove it, keeping a marker of what it was."""
    if not dataset.exists() or not extracted(workdir):
        return
    from rvc_core.atomic import write_json

    write_json(
        dataset.parent / DATASET_MARKER,
        {"uri": record.source.uri, "generation": record.source.generation,
         "bytes": dataset.stat().st_size, "removed": "extracted into work/extract"},
    )  # fmt: skip
    dataset.unlink(missing_ok=True)


def extracted(workdir: Path) -> bool:
    """Whether rvc_core's `extract` stage finished in this work dir (the zip's audio is in it)."""
    from rvc_core.layout import WorkDir

    return WorkDir(workdir).is_done("extract")
