"""The wiring of terraform/, read offline (no provider, no credentials), and deploy.sh's plan.

python-hcl2 lives in its own virtualenv (checkov's copy of the `hcl2` package conflicts with it), so
`scripts/infra_checks.sh hcl-json` parses the files there and prints JSON; these tests, run by the
main environment's pytest, assert on that JSON. Expressions stay as text (`${...}`), so the
assertions check references: "this endpoint is the service's URI plus /work", not values.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_URI = "${google_cloud_run_v2_service.trainer.uri}"


# --- reading the configuration ------------------------------------------------------------------------------
def _unquote(text: str) -> str:
    """python-hcl2 keeps string literals quoted (`"\\"datasets/\\""`) and expressions as `${...}`."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {_unquote(k): _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


@dataclass(frozen=True)
class Config:
    resources: dict[tuple[str, str], dict[str, Any]]  # (type, name) → body
    data: dict[tuple[str, str], dict[str, Any]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    terraform: list[dict[str, Any]]

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"terraform/ has no {kind}.{name}"
        return self.resources[(kind, name)]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}


def _merge(files: dict[str, Any]) -> Config:
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    data: dict[tuple[str, str], dict[str, Any]] = {}
    variables: dict[str, dict[str, Any]] = {}
    local_values: dict[str, Any] = {}
    outputs: dict[str, dict[str, Any]] = {}
    terraform: list[dict[str, Any]] = []
    for parsed in files.values():
        for section, into in (("resource", resources), ("data", data)):
            for entry in parsed.get(section, []):
                for kind, named in entry.items():
                    for name, body in named.items():
                        into[(kind, name)] = body
        for entry in parsed.get("variable", []):
            variables.update(entry)
        for entry in parsed.get("locals", []):
            local_values.update(entry)
        for entry in parsed.get("output", []):
            outputs.update(entry)
        terraform.extend(parsed.get("terraform", []))
    return Config(resources, data, variables, local_values, outputs, terraform)


@pytest.fixture(scope="module")
def tf() -> Config:
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra_checks.sh"), "hcl-json"],
        capture_output=True,
        text=True,
        timeout=600,  # the first run creates the python-hcl2 environment
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return _merge(_clean(json.loads(completed.stdout)))


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The one nested block `name` of a resource body."""
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block, got {blocks!r}"
    return blocks[0]


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


REFERENCE = re.compile(r"^\$\{(?:(?:data\.)?([a-z0-9_]+)\.([a-z0-9_]+)(?:\[0\])?(?:\.[a-z_]+)?)\}$")


def referenced(expression: Any) -> str:
    """`${google_storage_bucket.state.name}` → `google_storage_bucket.state`; `${var.x}` → `var.x`."""
    match = REFERENCE.match(str(expression))
    assert match, f"not a plain reference: {expression!r}"
    return f"{match.group(1)}.{match.group(2)}"


# --- push endpoints and delivery ----------------------------------------------------------------------------
def push_subscriptions(tf: Config) -> dict[str, dict[str, Any]]:
    return {
        name: body for name, body in tf.of_type("google_pubsub_subscription").items() if "push_config" in body
    }


@pytest.mark.parametrize(("subscription", "path"), [("intake", "/events"), ("work", "/work")])
def test_push_endpoint_is_the_service_url_plus_its_path(tf: Config, subscription: str, path: str) -> None:
    push = block(tf.resource("google_pubsub_subscription", subscription), "push_config")

    assert push["push_endpoint"] == SERVICE_URI + path


def test_only_intake_and_work_are_pushed(tf: Config) -> None:
    assert set(push_subscriptions(tf)) == {"intake", "work"}


@pytest.mark.parametrize("subscription", ["intake", "work"])
def test_push_carries_an_oidc_token_for_the_service(tf: Config, subscription: str) -> None:
    oidc = block(block(tf.resource("google_pubsub_subscription", subscription), "push_config"), "oidc_token")

    assert oidc["audience"] == SERVICE_URI
    assert referenced(oidc["service_account_email"]) == "google_service_account.push"


def test_work_subscription_waits_600_s_for_a_slice(tf: Config) -> None:
    assert tf.resource("google_pubsub_subscription", "work")["ack_deadline_seconds"] == 600


def test_slices_end_before_the_work_ack_deadline(tf: Config) -> None:
    slice_seconds = tf.variables["slice_seconds"]
    bounds = [int(n) for n in re.findall(r"<= (\d+)", block(slice_seconds, "validation")["condition"])]

    assert slice_seconds["default"] == 480
    assert bounds and max(bounds) < 600


@pytest.mark.parametrize("subscription", ["intake", "work"])
def test_push_subscription_retries_then_dead_letters(tf: Config, subscription: str) -> None:
    body = tf.resource("google_pubsub_subscription", subscription)
    policy = block(body, "dead_letter_policy")

    assert referenced(policy["dead_letter_topic"]) == "google_pubsub_topic.dead_letter"
    assert policy["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert set(block(body, "retry_policy")) == {"minimum_backoff", "maximum_backoff"}


def test_no_subscription_ever_expires(tf: Config) -> None:
    for name, body in tf.of_type("google_pubsub_subscription").items():
        assert block(body, "expiration_policy")["ttl"] == "", name


def test_users_pull_results_from_rvc_results(tf: Config) -> None:
    results = tf.resource("google_pubsub_subscription", "results")

    assert referenced(results["topic"]) == "google_pubsub_topic.results"
    assert "push_config" not in results
    assert tf.variables["results_subscription"]["default"] == "rvc-results"


def test_dead_letter_topic_has_a_holding_subscription(tf: Config) -> None:
    hold = tf.resource("google_pubsub_subscription", "dead_letter_hold")

    assert referenced(hold["topic"]) == "google_pubsub_topic.dead_letter"


# --- the service --------------------------------------------------------------------------------------------
def service(tf: Config) -> dict[str, Any]:
    return block(tf.resource("google_cloud_run_v2_service", "trainer"), "template")


def container(tf: Config) -> dict[str, Any]:
    return block(service(tf), "containers")


def test_service_has_one_nvidia_l4(tf: Config) -> None:
    limits = block(container(tf), "resources")["limits"]

    assert limits["nvidia.com/gpu"] == "1"
    assert block(service(tf), "node_selector")["accelerator"] == "nvidia-l4"


def test_service_keeps_its_cpu_allocated(tf: Config) -> None:
    assert block(container(tf), "resources")["cpu_idle"] is False


def test_service_takes_one_request_at_a_time(tf: Config) -> None:
    assert service(tf)["max_instance_request_concurrency"] == 1


def test_service_scales_to_the_gpu_quota_variable(tf: Config) -> None:
    assert block(service(tf), "scaling")["max_instance_count"] == "${var.max_instances}"
    assert service(tf)["gpu_zonal_redundancy_disabled"] == "${var.gpu_zonal_redundancy_disabled}"


def test_service_allows_requests_of_an_hour(tf: Config) -> None:
    assert service(tf)["timeout"] == "3600s"


def test_service_starts_taking_work_once_healthz_answers(tf: Config) -> None:
    probe = block(container(tf), "startup_probe")

    assert block(probe, "http_get")["path"] == "/healthz"
    assert "liveness_probe" not in container(tf)  # the one worker is busy for a whole slice


def test_service_runs_as_the_runtime_account(tf: Config) -> None:
    assert referenced(service(tf)["service_account"]) == "google_service_account.runtime"


def test_cpu_is_4_or_8_and_memory_at_least_16_gib(tf: Config) -> None:
    cpu, memory = tf.variables["cpu"], tf.variables["memory_gib"]

    assert "contains([4, 8], var.cpu)" in block(cpu, "validation")["condition"]
    assert memory["default"] >= 16
    assert any("var.memory_gib >= 16" in v["condition"] for v in memory["validation"])
    assert block(container(tf), "resources")["limits"]["memory"] == "${var.memory_gib}Gi"


def test_every_setting_reaches_the_service_as_an_environment_variable(tf: Config) -> None:
    env = block(container(tf), "dynamic")["env"]
    assert env["for_each"] == "${local.service_env}"

    assert {
        "GOOGLE_CLOUD_PROJECT", "INBOX_BUCKET", "INBOX_PREFIX", "STATE_BUCKET", "MODELS_BUCKET", "WORK_TOPIC",
        "RESULTS_TOPIC", "SLICE_SECONDS", "MAX_CONSECUTIVE_FAILURES", "TRAIN_PRESET", "RVC_ASSETS",
        "RVC_PRETRAINED",
    } <= set(tf.locals["service_env"])  # fmt: skip


def test_environment_names_are_settings_the_service_reads(tf: Config) -> None:
    from dataclasses import MISSING, fields

    from consumer.settings import Settings

    read = {f.metadata["env"] for f in fields(Settings)}
    required = {f.metadata["env"] for f in fields(Settings) if f.default is MISSING}
    given = set(tf.locals["service_env"]) - {"INBOX_BUCKET"}  # for operators reading the revision

    assert given <= read
    assert required <= given


def test_service_writes_to_the_state_and_models_buckets_only(tf: Config) -> None:
    env = tf.locals["service_env"]

    assert env["STATE_BUCKET"] == "gs://${google_storage_bucket.state.name}"
    assert env["MODELS_BUCKET"] == "gs://${google_storage_bucket.models.name}"
    assert env["WORK_TOPIC"] == "${google_pubsub_topic.work.name}"
    assert env["RESULTS_TOPIC"] == "${google_pubsub_topic.results.name}"


# --- what starts a job --------------------------------------------------------------------------------------
def test_notification_covers_only_finalized_uploads_under_the_inbox_prefix(tf: Config) -> None:
    notification = tf.resource("google_storage_notification", "intake")

    assert referenced(notification["bucket"]) == "google_storage_bucket.inbox"
    assert notification["object_name_prefix"] == "${var.inbox_prefix}"
    assert notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["payload_format"] == "JSON_API_V1"
    assert referenced(notification["topic"]) == "google_pubsub_topic.intake"


def test_inbox_prefix_cannot_cover_the_whole_bucket_or_upload_parts(tf: Config) -> None:
    prefix = tf.variables["inbox_prefix"]
    condition = block(prefix, "validation")["condition"]

    assert prefix["default"] == "datasets/"
    assert "/$" in condition  # a folder, never the empty prefix (which would take every object)
    assert '!startswith(var.inbox_prefix, "gcloud/")' in condition


def test_nothing_the_service_writes_is_watched(tf: Config) -> None:
    """The service writes to state and models (env above); only the inbox has a trigger."""
    watched = {referenced(tf.resource("google_storage_notification", "intake")["bucket"])}
    for criteria in tf.resource("google_eventarc_trigger", "intake")["matching_criteria"]:
        if criteria["attribute"] == "bucket":
            watched.add(referenced(criteria["value"]))

    assert watched == {"google_storage_bucket.inbox"}
    buckets = {tf.resource("google_storage_bucket", b)["name"] for b in ("inbox", "state", "models")}
    assert len(buckets) == 3


def test_trigger_variable_chooses_notification_or_eventarc(tf: Config) -> None:
    trigger = tf.variables["trigger"]

    assert trigger["default"] == "notification"
    assert 'contains(["notification", "eventarc"], var.trigger)' in block(trigger, "validation")["condition"]
    assert (
        tf.resource("google_storage_notification", "intake")["count"] == "${local.use_notification ? 1 : 0}"
    )
    assert tf.resource("google_eventarc_trigger", "intake")["count"] == "${local.use_eventarc ? 1 : 0}"


def test_eventarc_trigger_delivers_finalized_objects_to_events(tf: Config) -> None:
    trigger = tf.resource("google_eventarc_trigger", "intake")
    destination = block(block(trigger, "destination"), "cloud_run_service")
    criteria = {c["attribute"]: c["value"] for c in trigger["matching_criteria"]}

    assert criteria["type"] == "google.cloud.storage.object.v1.finalized"
    assert destination["path"] == "/events"
    assert referenced(destination["service"]) == "google_cloud_run_v2_service.trainer"


# --- buckets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", ["inbox", "state", "models", "sources"])
def test_bucket_is_private_with_uniform_access(tf: Config, bucket: str) -> None:
    body = tf.resource("google_storage_bucket", bucket)

    assert body["uniform_bucket_level_access"] is True
    assert body["public_access_prevention"] == "enforced"


def lifecycle_prefixes(tf: Config, bucket: str) -> dict[str, Any]:
    rules = tf.resource("google_storage_bucket", bucket)["lifecycle_rule"]
    return {
        prefix: block(rule, "condition")["age"]
        for rule in rules
        if block(rule, "action")["type"] == "Delete"
        for prefix in block(rule, "condition").get("matches_prefix", [])
    }


def test_inbox_deletes_datasets_and_stray_upload_parts(tf: Config) -> None:
    assert lifecycle_prefixes(tf, "inbox") == {
        "${var.inbox_prefix}": "${var.dataset_retention_days}",
        "gcloud/tmp/": 1,
    }


def test_state_deletes_finished_jobs(tf: Config) -> None:
    assert lifecycle_prefixes(tf, "state") == {"jobs/": "${var.state_retention_days}"}


def test_models_keep_versions(tf: Config) -> None:
    assert block(tf.resource("google_storage_bucket", "models"), "versioning")["enabled"] is True


# --- identities ---------------------------------------------------------------------------------------------
TARGET_KEYS = ("bucket", "topic", "subscription", "service_account_id", "name", "project")

EXPECTED_ROLES: dict[str, set[tuple[str, str]]] = {
    "google_service_account.runtime": {
        ("google_storage_bucket.inbox", "roles/storage.objectViewer"),
        ("google_storage_bucket.state", "roles/storage.objectAdmin"),
        ("google_storage_bucket.models", "roles/storage.objectAdmin"),
        ("each.value", "roles/storage.objectViewer"),  # the gs:// asset buckets, if any
        ("google_pubsub_topic.results", "roles/pubsub.publisher"),
        ("google_pubsub_topic.work", "roles/pubsub.publisher"),
    },
    "google_service_account.push": {("google_cloud_run_v2_service.trainer", "roles/run.invoker")},
    "google_service_account.eventarc": {
        ("google_cloud_run_v2_service.trainer", "roles/run.invoker"),
        ("var.project_id", "roles/eventarc.eventReceiver"),
    },
    "google_service_account.dead_letter": {
        ("google_storage_bucket.state", "roles/storage.objectUser"),
        ("google_pubsub_topic.results", "roles/pubsub.publisher"),
        ("google_cloudfunctions2_function.dead_letter", "roles/run.invoker"),
    },
    "google_service_account.builder": {
        ("var.project_id", "roles/logging.logWriter"),
        ("var.project_id", "roles/artifactregistry.writer"),
        ("google_storage_bucket.sources", "roles/storage.objectViewer"),
    },
    "local.pubsub_service_agent": {
        ("google_pubsub_topic.dead_letter", "roles/pubsub.publisher"),
        ("google_pubsub_subscription.intake", "roles/pubsub.subscriber"),
        ("google_pubsub_subscription.work", "roles/pubsub.subscriber"),
        ("google_service_account.push", "roles/iam.serviceAccountTokenCreator"),
        ("google_service_account.eventarc", "roles/iam.serviceAccountTokenCreator"),
    },
    "local.storage_service_agent": {
        ("google_pubsub_topic.intake", "roles/pubsub.publisher"),
        ("var.project_id", "roles/pubsub.publisher"),  # Eventarc's Cloud Storage triggers only
    },
}


def granted_roles(tf: Config) -> dict[str, set[tuple[str, str]]]:
    grants: dict[str, set[tuple[str, str]]] = {}
    for (kind, _name), body in tf.resources.items():
        if not kind.endswith("_iam_member"):
            continue
        target = next(body[key] for key in TARGET_KEYS if key in body)
        grants.setdefault(referenced(body["member"]), set()).add((referenced(target), body["role"]))
    return grants


def test_every_identity_holds_exactly_its_roles(tf: Config) -> None:
    assert granted_roles(tf) == EXPECTED_ROLES


def test_grants_never_replace_existing_policies(tf: Config) -> None:
    authoritative = [k for k, _ in tf.resources if k.endswith(("_iam_binding", "_iam_policy"))]

    assert authoritative == []


def test_nobody_outside_the_project_is_granted_anything(tf: Config) -> None:
    texts = [item for item in walk(tf.resources) if isinstance(item, str)]

    assert not [t for t in texts if "allUsers" in t or "allAuthenticatedUsers" in t]


# --- the dead-letter function -------------------------------------------------------------------------------
def test_dead_letter_function_is_built_from_its_folder_and_fed_by_the_dead_letter_topic(tf: Config) -> None:
    function = tf.resource("google_cloudfunctions2_function", "dead_letter")
    trigger = block(function, "event_trigger")
    archive = tf.data[("archive_file", "dead_letter")]

    assert archive["source_dir"] == "${path.module}/../functions/dead_letter"
    assert referenced(trigger["pubsub_topic"]) == "google_pubsub_topic.dead_letter"
    assert trigger["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert block(function, "build_config")["entry_point"] == "handle"
    assert (ROOT / "functions" / "dead_letter" / "main.py").is_file()


def test_dead_letter_function_gets_the_settings_it_reads(tf: Config) -> None:
    env = block(tf.resource("google_cloudfunctions2_function", "dead_letter"), "service_config")[
        "environment_variables"
    ]
    source = (ROOT / "functions" / "dead_letter" / "main.py").read_text()

    for name in ("GOOGLE_CLOUD_PROJECT", "STATE_BUCKET", "RESULTS_TOPIC", "INBOX_PREFIX"):
        assert name in env and f'"{name}"' in source
    assert env["STATE_BUCKET"] == "gs://${google_storage_bucket.state.name}"


# --- variables, provider, outputs ---------------------------------------------------------------------------
def test_every_variable_is_described_and_validated(tf: Config) -> None:
    for name, variable in tf.variables.items():
        assert variable.get("description"), f"variable {name} has no description"
        if variable.get("type") in ("${bool}", "bool", "${map(string)}", "map(string)"):
            continue  # nothing to validate beyond the type
        assert variable.get("validation"), f"variable {name} has no validation"


def test_google_provider_is_7_14_or_later_within_7(tf: Config) -> None:
    providers = (
        block(tf.terraform[0], "required_providers") if "required_providers" in tf.terraform[0] else {}
    )

    assert providers["google"]["version"] == ">= 7.14, < 8"


def test_outputs_give_names_url_and_ready_commands(tf: Config) -> None:
    assert {
        "service_url", "inbox_bucket", "state_bucket", "models_bucket", "topics", "subscriptions",
        "upload_command", "upload_command_gcloud", "pull_command",
    } <= set(tf.outputs)  # fmt: skip
    assert "x-goog-meta-model-name:alice" in tf.outputs["upload_command"]["value"]
    assert "--auto-ack" in tf.outputs["pull_command"]["value"]


# --- deploy.sh ----------------------------------------------------------------------------------------------
def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_deploy_builds_with_cloud_build_then_applies_the_image() -> None:
    completed = deploy("--dry-run", "--project", "my-proj", "--region", "europe-west4", "--tag", "t1")
    lines = completed.stdout.splitlines()
    image = "europe-west4-docker.pkg.dev/my-proj/rvc-trainer/rvc-trainer:t1"

    assert completed.returncode == 0, completed.stderr
    build = next(i for i, line in enumerate(lines) if line.startswith("+ gcloud builds submit"))
    assert f"--tag {image}" in lines[build]
    final_apply = max(i for i, line in enumerate(lines) if " apply " in line)
    assert final_apply > build
    assert f"image={image}" in lines[final_apply]
    assert "-target" not in lines[final_apply]


def test_deploy_without_a_project_refuses_to_start() -> None:
    completed = deploy("--dry-run")

    assert completed.returncode == 2
    assert "no project" in completed.stderr


# --- the image ---------------------------------------------------------------------------------------------
def test_image_starts_the_services_app_factory() -> None:
    import importlib

    dockerfile = (ROOT / "Dockerfile").read_text()
    target = re.search(r"'([\w.]+):(\w+)\(\)'", dockerfile)  # gunicorn's 'module:factory()'

    assert target is not None
    assert callable(getattr(importlib.import_module(target.group(1)), target.group(2)))


def test_image_replaces_the_one_faiss_cpu_pin_with_faiss_gpu() -> None:
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("faiss-cpu==")
    ]

    assert len(pins) == 1  # the Dockerfile's build step drops exactly this line
    assert "faiss-gpu-cu12==" in (ROOT / "Dockerfile").read_text()


def test_service_reads_weights_where_the_image_puts_them(tf: Config) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert f"assets download --dest {tf.variables['rvc_assets']['default']};" in dockerfile
    assert tf.variables["rvc_pretrained"]["default"] == tf.variables["rvc_assets"]["default"]
