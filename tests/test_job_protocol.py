"""The job protocol in one place: `consumer.jobs` (records, results, uploads), imported by the services
and by the dead-letter function, whose deploy archive (functions/dead_letter/ARCHIVE) carries it.

The archive test stages exactly the files ARCHIVE names, as the deploy archive lays them out, and
imports main.py from that folder alone in a fresh interpreter where torch, numpy and flask cannot be
imported: what the function needs beyond its pinned requirements must be in the list.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from consumer.jobs import records, results, uploads
from consumer.jobs.uploads import default_model_name, model_name_hint, why_not_an_upload
from rvc_core import names

REPO = Path(__file__).resolve().parents[1]
FUNCTION_DIR = "functions/dead_letter/"
ARCHIVE_LIST = REPO / FUNCTION_DIR / "ARCHIVE"


def archive_files() -> dict[str, Path]:
    """Path in the deploy archive → file in this repository, as functions/dead_letter/ARCHIVE says."""
    files: dict[str, Path] = {}
    for line in ARCHIVE_LIST.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        sources = sorted((REPO / entry).glob("*.py")) if entry.endswith("/") else [REPO / entry]
        for source in sources:
            files[source.relative_to(REPO).as_posix().removeprefix(FUNCTION_DIR)] = source
    return files


def stage_archive(into: Path) -> Path:
    for name, source in archive_files().items():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return into


def test_archive_list_names_the_function_and_the_protocol_package() -> None:
    files = archive_files()

    assert all(source.is_file() for source in files.values())
    assert {"main.py", "requirements.txt"} <= set(files)
    for module in ("records", "results", "uploads"):
        assert f"consumer/jobs/{module}.py" in files
    assert {
        "consumer/__init__.py",
        "consumer/errors.py",
        "rvc_core/__init__.py",
        "rvc_core/errors.py",
        "rvc_core/names.py",
    } <= set(files)
    assert not any(name.startswith(("consumer/adapters", "consumer/work", "rvc_core/job")) for name in files)


# Runs in a fresh interpreter: `-I` keeps the checkout (and PYTHONPATH) off sys.path; the staged
# archive goes first; torch, numpy and flask refuse to import. functions-framework is the platform's
# (and imports flask): a stand-in provides its decorator. The function then handles a dead-lettered
# upload against in-memory stand-ins (the result CloudEvent is built, cloudevents imported), and
# builds its Google clients (google-cloud-storage and google-cloud-pubsub import, no call is made).
ARCHIVE_PROBE = textwrap.dedent(
    """
    import base64, importlib.abc, json, os, sys, types

    BLOCKED = {"torch", "numpy", "flask"}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not available to the function")
            return None

    sys.meta_path.insert(0, Refuse())
    stage = sys.argv[1]
    sys.path.insert(0, stage)
    framework = types.ModuleType("functions_framework")
    framework.cloud_event = lambda function: function
    sys.modules["functions_framework"] = framework

    import main
    from consumer.errors import NotFound, PreconditionFailed
    from consumer.jobs.records import JobRecords
    from consumer.jobs.results import Results

    class Store:
        def __init__(self):
            self.objects = {}
        def read_bytes(self, uri):
            if uri not in self.objects:
                raise NotFound(uri)
            return self.objects[uri]
        def write_bytes(self, uri, data, *, if_generation_match=None, content_type=None, metadata=None):
            current = self.objects.get(uri, (b"", 0))[1]
            if if_generation_match is not None and current != if_generation_match:
                raise PreconditionFailed(uri)
            self.objects[uri] = (data, current + 1)
            return current + 1

    class Publisher:
        def __init__(self):
            self.messages = []
        def publish(self, topic, data, attributes):
            self.messages.append(dict(attributes))
            return "1"

    publisher = Publisher()
    results = Results(publisher, "results", project="p")
    deps = main.Deps(records=JobRecords(Store(), "gs://state"), results=results)
    attributes = {"bucketId": "inbox", "objectId": "datasets/alice.zip", "objectGeneration": "7",
                  "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    body = {"message": {"data": base64.b64encode(b"{}").decode(), "attributes": attributes, "messageId": "1"}}
    outcome = main.process(main.DeadLetter.from_push(body), deps)

    os.environ["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:9"
    os.environ["PUBSUB_EMULATOR_HOST"] = "127.0.0.1:9"
    main.storage_client("p")
    main.publisher_client()

    ours = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
            if name == "main" or name.split(".")[0] in ("consumer", "rvc_core")}
    print(json.dumps({
        "action": outcome.action,
        "published": [m.get("ce-type") for m in publisher.messages],
        "modules": ours,
        "blocked_loaded": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED),
        "repo_on_path": any(os.path.realpath(p) == os.path.realpath(sys.argv[2]) for p in sys.path),
    }))
    """
)


def test_function_imports_from_its_deploy_archive_alone(tmp_path: Path) -> None:
    stage = stage_archive(tmp_path / "archive")

    done = subprocess.run(
        [sys.executable, "-I", "-c", ARCHIVE_PROBE, str(stage), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["action"] == "reported"
    assert report["published"] == ["dev.rvc-trainer.training.failed"]
    assert report["blocked_loaded"] == []
    assert report["repo_on_path"] is False
    for module, path in report["modules"].items():
        assert path is not None and Path(path).resolve().is_relative_to(stage.resolve()), (module, path)
    assert set(report["modules"]) >= {
        "main",
        "consumer.jobs.records",
        "consumer.jobs.results",
        "consumer.jobs.uploads",
        "rvc_core.names",
    }


# --- the function uses the protocol, it does not re-implement it --------------------------------------------
PROTOCOL_NAMES = {
    "JobRecord",
    "JobRecords",
    "source_key",
    "job_id_for",
    "result_message",
    "event_data",
    "claim_announcement",
    "mark_announced",
    "publish_once",
    "why_not_an_upload",
    "model_name_hint",
    "default_model_name",
    "sanitise_model_name",
    "encode_record",
}


def test_dead_letter_function_defines_none_of_the_protocol() -> None:
    tree = ast.parse((REPO / FUNCTION_DIR / "main.py").read_text(encoding="utf-8"))
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("consumer.jobs")
        for alias in node.names
    }
    top_level_imports = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }

    assert defined & PROTOCOL_NAMES == set()
    assert {"JobRecords", "job_id_for", "publish_once", "why_not_an_upload", "model_name_hint"} <= imported
    assert "hashlib" not in top_level_imports and "re" not in top_level_imports


def test_protocol_modules_import_nothing_but_the_standard_library_and_each_other() -> None:
    allowed = {
        "consumer.errors",
        "consumer.jobs.records",
        "consumer.jobs.results",
        "consumer.jobs.uploads",
        "rvc_core.names",
    }
    for module in (records, results, uploads, names):
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: TYPE_CHECKING blocks and lazy imports are not run
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                root = node.module.split(".")[0]
                if root in ("consumer", "rvc_core"):
                    assert node.module in allowed, (module.__name__, node.module)
                else:
                    assert root in sys.stdlib_module_names or root == "__future__", (module.__name__, root)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in sys.stdlib_module_names, (module.__name__, alias.name)


# --- the upload filters and the model-name rule ----------------------------------------------------------
@pytest.mark.parametrize(
    ("bucket", "name", "reason"),
    [
        ("inbox", "datasets/alice.zip", None),
        ("inbox", "datasets/sub/alice.ZIP", None),
        (
            "inbox",
            "gcloud/tmp/parallel_composite_uploads/x",
            "a temporary part of a parallel composite upload",
        ),
        ("inbox", "elsewhere/a.zip", "outside the inbox prefix"),
        ("inbox", "datasets/sub/", "a folder placeholder"),
        ("inbox", "datasets/a.txt", "not a .zip"),
        ("state", "datasets/a.zip", "the object is in one of the service's own buckets"),
    ],
)
def test_upload_filters(bucket: str, name: str, reason: str | None) -> None:
    assert why_not_an_upload(bucket, name, inbox_prefix="datasets/", own_buckets=("gs://state",)) == reason


def test_own_bucket_may_be_a_prefix_of_the_inbox_bucket() -> None:
    own = ("gs://inbox/state",)

    assert why_not_an_upload("inbox", "state/x.zip", inbox_prefix="", own_buckets=own) is not None
    assert why_not_an_upload("inbox", "stateful.zip", inbox_prefix="", own_buckets=own) is None
    local = why_not_an_upload(
        "state",
        "a.zip",
        inbox_prefix="",
        own_buckets=("file:///b/state",),
        object_url="file:///b/state/a.zip",
    )
    assert local == "the object is in one of the service's own buckets"


@pytest.mark.parametrize(
    ("metadata", "name", "expected"),
    [
        ({"model-name": "alice"}, "datasets/voice.zip", "alice"),
        ({"Model_Name": "bob"}, "datasets/voice.zip", "bob"),
        ({"modelName": "carol"}, "datasets/voice.zip", "carol"),
        ({"model_name": "bad name!"}, "datasets/My Voice (2).zip", "My_Voice_2"),
        ({"name": "dave"}, "datasets/voice.zip", "voice"),
        ({}, "datasets/deep/nested/erin.ZIP", "erin"),
        ({"epochs": "10"}, "datasets/..zip", "model"),
    ],
)
def test_model_name_hint(metadata: dict[str, str], name: str, expected: str) -> None:
    assert model_name_hint(metadata, name) == expected


def test_default_model_name_fits_the_rule() -> None:
    name = default_model_name("datasets/" + "é" * 10 + "x" * 100 + ".zip")

    assert uploads.MODEL_NAME.match(name) and len(name) == 64


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("alice", True),
        ("a" * 64, True),
        ("a-b_C9", True),
        ("", False),
        ("a" * 65, False),
        ("bad name", False),
        ("é", False),
        ("alice\n", False),
    ],
)
def test_one_model_name_rule(value: str, valid: bool) -> None:
    """The library, the services and the function share one rule (rvc_core.names); a trailing newline,
    which `$` alone would let through, is refused."""
    assert names.is_model_name(value) is valid
    assert names.is_model_name(names.sanitise_model_name(value))
    assert uploads.sanitise_model_name is names.sanitise_model_name
