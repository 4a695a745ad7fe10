"""The wiring of terraform/, read offline (no provider, no credentials), and deploy.sh's plan.

python-hcl2 lives in its own virtualenv (checkov's copy of the `hcl2` package conflicts with it), so
`scripts/infra_checks.sh hcl-json` parses the files there and prints JSON; these tests, run by the
main environment's pytest, assert on that JSON. Expressions stay as text (`${...}`), so the
assertions check references: "the push endpoint is the front's URL plus /events", not values.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_job_protocol import archive_files

ROOT = Path(__file__).resolve().parents[1]
FRONT_URL = "${local.front_url}"
GPU_SERVICE = "google_cloud_run_v2_service.trainer"
API_SERVICE = "google_cloud_run_v2_service.api"


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


# --- the front: who takes the upload push, /train and status ------------------------------------------------
def test_topology_variable_chooses_single_or_scale_out(tf: Config) -> None:
    topology = tf.variables["topology"]

    assert topology["default"] == "single"
    assert 'contains(["single", "scale-out"], var.topology)' in block(topology, "validation")["condition"]
    assert tf.locals["single_topology"] == '${var.topology == "single"}'
    assert tf.locals["scale_out_topology"] == '${var.topology == "scale-out"}'


def test_front_is_the_api_service_in_scale_out_and_the_gpu_service_otherwise(tf: Config) -> None:
    for key, attribute in (("front_url", "uri"), ("front_service_name", "name")):
        assert tf.locals[key] == (
            f"${{local.scale_out_topology ? {API_SERVICE}[0].{attribute} : {GPU_SERVICE}.{attribute}}}"
        )
    assert tf.resource("google_cloud_run_v2_service", "api")["count"] == "${local.scale_out_topology ? 1 : 0}"


def push_subscriptions(tf: Config) -> dict[str, dict[str, Any]]:
    return {
        name: body for name, body in tf.of_type("google_pubsub_subscription").items() if "push_config" in body
    }


def test_only_intake_is_pushed_and_to_the_front(tf: Config) -> None:
    push = block(tf.resource("google_pubsub_subscription", "intake"), "push_config")
    oidc = block(push, "oidc_token")

    assert set(push_subscriptions(tf)) == {"intake"}
    assert push["push_endpoint"] == FRONT_URL + "/events"
    assert oidc["audience"] == FRONT_URL
    assert referenced(oidc["service_account_email"]) == "google_service_account.push"


def test_intake_push_retries_then_dead_letters(tf: Config) -> None:
    body = tf.resource("google_pubsub_subscription", "intake")
    policy = block(body, "dead_letter_policy")

    assert referenced(policy["dead_letter_topic"]) == "google_pubsub_topic.dead_letter"
    assert policy["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert set(block(body, "retry_policy")) == {"minimum_backoff", "maximum_backoff"}


def test_no_work_topic_or_subscription_remains(tf: Config) -> None:
    assert set(tf.of_type("google_pubsub_topic")) == {"intake", "results", "dead_letter"}
    assert set(tf.of_type("google_pubsub_subscription")) == {"intake", "results", "dead_letter_hold"}
    texts = [t for t in walk([tf.resources, tf.locals, tf.outputs]) if isinstance(t, str)]
    assert not [t for t in texts if "WORK_TOPIC" in t or "pubsub_topic.work" in t or "subscription.work" in t]
    assert "slice_seconds" not in tf.variables  # derived by the app from the dispatch deadline


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


# --- the work queue -----------------------------------------------------------------------------------------
def queue(tf: Config) -> dict[str, Any]:
    return tf.resource("google_cloud_tasks_queue", "work")


def test_queue_dispatches_as_many_slices_as_there_are_gpu_instances(tf: Config) -> None:
    dispatches = block(queue(tf), "rate_limits")["max_concurrent_dispatches"]

    assert dispatches == block(gpu_service(tf), "scaling")["max_instance_count"] == "${var.max_instances}"
    assert tf.locals["common_env"]["WORKER_SLOTS"] == "${tostring(var.max_instances)}"


def test_queue_retries_without_limit_with_bounded_backoff(tf: Config) -> None:
    retry = block(queue(tf), "retry_config")

    assert retry["max_attempts"] == -1
    assert "max_retry_duration" not in retry  # waiting never runs out
    assert retry["min_backoff"] == "10s"
    assert retry["max_backoff"] == "300s"
    assert retry["max_doublings"] == 4


def test_queue_is_named_after_the_prefix_in_the_region(tf: Config) -> None:
    assert queue(tf)["name"] == "${var.name_prefix}-work"
    assert queue(tf)["location"] == "${var.region}"
    assert referenced(tf.locals["common_env"]["TASK_QUEUE"]) == "google_cloud_tasks_queue.work"


def test_work_url_is_the_gpu_services_deterministic_url(tf: Config) -> None:
    """A service cannot read its own `uri` (a cycle), so WORK_URL is Cloud Run's deterministic URL."""
    assert tf.locals["worker_origin"] == (
        "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"
    )
    assert tf.locals["work_url"] == "${local.worker_origin}/work"
    assert tf.locals["common_env"]["WORK_URL"] == "${local.work_url}"
    # "<name>-<project number>" must fit a 63-character DNS label; "<name>-api" a service name.
    assert "{0,43}" in block(tf.variables["service_name"], "validation")["condition"]


def test_dispatch_deadline_is_at_most_cloud_tasks_30_minutes(tf: Config) -> None:
    deadline = tf.variables["dispatch_deadline_seconds"]
    bounds = [int(n) for n in re.findall(r"<= (\d+)", block(deadline, "validation")["condition"])]

    assert deadline["default"] == 1800
    assert bounds and max(bounds) == 1800
    env = tf.locals["common_env"]
    assert env["DISPATCH_DEADLINE_SECONDS"] == "${tostring(var.dispatch_deadline_seconds)}"


def test_tasks_carry_the_tasks_accounts_identity(tf: Config) -> None:
    assert referenced(tf.locals["common_env"]["TASKS_SERVICE_ACCOUNT"]) == "google_service_account.tasks"


# --- the services -------------------------------------------------------------------------------------------
def gpu_service(tf: Config) -> dict[str, Any]:
    return block(tf.resource("google_cloud_run_v2_service", "trainer"), "template")


def api_service(tf: Config) -> dict[str, Any]:
    return block(tf.resource("google_cloud_run_v2_service", "api"), "template")


def container(template: dict[str, Any]) -> dict[str, Any]:
    return block(template, "containers")


def test_gpu_service_has_one_nvidia_l4(tf: Config) -> None:
    limits = block(container(gpu_service(tf)), "resources")["limits"]

    assert limits["nvidia.com/gpu"] == "1"
    assert block(gpu_service(tf), "node_selector")["accelerator"] == "nvidia-l4"


def test_gpu_service_keeps_its_cpu_allocated(tf: Config) -> None:
    assert block(container(gpu_service(tf)), "resources")["cpu_idle"] is False


def test_gpu_service_takes_requests_while_a_slice_runs_when_it_is_the_front(tf: Config) -> None:
    concurrency = tf.variables["request_concurrency"]

    assert gpu_service(tf)["max_instance_request_concurrency"] == (
        "${local.single_topology ? var.request_concurrency : 1}"
    )
    assert concurrency["default"] > 1
    assert "var.request_concurrency >= 2" in block(concurrency, "validation")["condition"]


def test_gpu_service_scales_to_the_gpu_quota_variable(tf: Config) -> None:
    assert block(gpu_service(tf), "scaling")["max_instance_count"] == "${var.max_instances}"
    assert gpu_service(tf)["gpu_zonal_redundancy_disabled"] == "${var.gpu_zonal_redundancy_disabled}"


def test_gpu_service_allows_requests_longer_than_the_dispatch_deadline(tf: Config) -> None:
    assert gpu_service(tf)["timeout"] == "3600s"


@pytest.mark.parametrize("service", ["trainer", "api"])
def test_service_starts_taking_requests_once_healthz_answers(tf: Config, service: str) -> None:
    template = block(tf.resource("google_cloud_run_v2_service", service), "template")
    probe = block(container(template), "startup_probe")

    assert block(probe, "http_get")["path"] == "/healthz"
    assert "liveness_probe" not in container(template)


def test_roles_come_from_one_codebase_by_arguments(tf: Config) -> None:
    gpu, api = container(gpu_service(tf)), container(api_service(tf))

    assert gpu["command"] == api["command"] == ["python", "-m", "consumer"]
    assert gpu["args"] == ["serve", "--role", "${local.gpu_service_role}"]
    assert api["args"] == ["serve", "--role", "api"]
    assert tf.locals["gpu_service_role"] == '${local.single_topology ? "all" : "worker"}'
    assert referenced(gpu["image"]) == "var.worker_image"
    assert referenced(api["image"]) == "var.api_image"


def test_api_service_has_no_gpu_and_scales_to_zero(tf: Config) -> None:
    template = api_service(tf)
    resources = block(container(template), "resources")

    assert "node_selector" not in template
    assert "nvidia.com/gpu" not in resources["limits"]
    assert resources["cpu_idle"] is True
    assert block(template, "scaling")["min_instance_count"] == 0
    assert template["max_instance_request_concurrency"] == "${var.request_concurrency}"


def test_scale_out_needs_the_api_image(tf: Config) -> None:
    conditions = [v["condition"] for v in tf.variables["api_image"]["validation"]]

    assert any('var.topology != "scale-out" || var.api_image != null' in c for c in conditions)


def test_services_run_as_their_own_accounts(tf: Config) -> None:
    assert referenced(gpu_service(tf)["service_account"]) == "google_service_account.runtime"
    assert referenced(api_service(tf)["service_account"]) == "google_service_account.api"


def test_cpu_is_4_or_8_and_memory_at_least_16_gib(tf: Config) -> None:
    cpu, memory = tf.variables["cpu"], tf.variables["memory_gib"]

    assert "contains([4, 8], var.cpu)" in block(cpu, "validation")["condition"]
    assert memory["default"] >= 16
    assert any("var.memory_gib >= 16" in v["condition"] for v in memory["validation"])
    assert block(container(gpu_service(tf)), "resources")["limits"]["memory"] == "${var.memory_gib}Gi"


# The environment contract between terraform/ and the app (consumer/settings.py, the CLI).
SERVICE_ENV = {
    "GOOGLE_CLOUD_PROJECT", "INBOX_BUCKET", "INBOX_PREFIX", "STATE_BUCKET", "MODELS_BUCKET", "RESULTS_TOPIC",
    "TASK_QUEUE", "WORK_URL", "TASKS_SERVICE_ACCOUNT", "DISPATCH_DEADLINE_SECONDS", "WORKER_SLOTS",
    "MAX_CONSECUTIVE_FAILURES", "TRAIN_PRESET", "RVC_ASSETS", "RVC_PRETRAINED", "PUSH_SERVICE_ACCOUNT",
    "REQUIRE_PUSH_IDENTITY", "MESSAGING", "SERVICE_ROLE", "DEVICE",
}  # fmt: skip


@pytest.mark.parametrize(
    ("service", "env_local"), [("trainer", "gpu_service_env"), ("api", "api_service_env")]
)
def test_every_setting_reaches_each_service_as_an_environment_variable(
    tf: Config, service: str, env_local: str
) -> None:
    template = block(tf.resource("google_cloud_run_v2_service", service), "template")
    env = block(container(template), "dynamic")["env"]

    assert env["for_each"] == f"${{local.{env_local}}}"
    assert tf.locals[env_local].startswith("${merge(local.common_env, {")
    assert set(tf.locals["common_env"]) | {"SERVICE_ROLE", "DEVICE"} == SERVICE_ENV


def test_push_identity_is_required_and_is_whoever_pushes(tf: Config) -> None:
    env = tf.locals["common_env"]

    assert env["REQUIRE_PUSH_IDENTITY"] == "true"
    assert env["PUSH_SERVICE_ACCOUNT"] == "${local.push_identity_email}"
    assert tf.locals["push_identity_email"] == (
        "${local.use_eventarc ? google_service_account.eventarc[0].email : google_service_account.push.email}"
    )


# Settings issue 8 introduced; the app side adopts them while terraform/ already passes them.
def test_environment_names_are_settings_the_service_reads(tf: Config) -> None:
    from dataclasses import MISSING, fields

    from consumer.settings import Settings

    read = {f.metadata["env"] for f in fields(Settings)}
    required = {f.metadata["env"] for f in fields(Settings) if f.default is MISSING}
    given = SERVICE_ENV
    unread = given - read

    assert required <= given
    assert not unread, f"terraform/ passes settings the app does not read: {sorted(unread)}"


def test_service_writes_to_the_state_and_models_buckets_only(tf: Config) -> None:
    env = tf.locals["common_env"]

    assert env["STATE_BUCKET"] == "gs://${google_storage_bucket.state.name}"
    assert env["MODELS_BUCKET"] == "gs://${google_storage_bucket.models.name}"
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
    assert destination["service"] == "${local.front_service_name}"


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
    "google_service_account.runtime": {  # the GPU service
        ("google_storage_bucket.inbox", "roles/storage.objectViewer"),
        ("google_storage_bucket.state", "roles/storage.objectAdmin"),
        ("google_storage_bucket.models", "roles/storage.objectAdmin"),
        ("each.value", "roles/storage.objectViewer"),  # the gs:// asset buckets, if any
        ("google_pubsub_topic.results", "roles/pubsub.publisher"),
        ("google_cloud_tasks_queue.work", "roles/cloudtasks.enqueuer"),  # each job's next slice
        ("google_service_account.tasks", "roles/iam.serviceAccountUser"),  # actAs for the OIDC token
    },
    "google_service_account.api": {  # the CPU front (scale-out): intake, status, pages; never writes models
        ("google_storage_bucket.inbox", "roles/storage.objectViewer"),
        ("google_storage_bucket.models", "roles/storage.objectViewer"),  # the job page's downloads
        ("google_storage_bucket.state", "roles/storage.objectAdmin"),
        ("google_pubsub_topic.results", "roles/pubsub.publisher"),
        ("google_cloud_tasks_queue.work", "roles/cloudtasks.enqueuer"),  # task #0
        ("google_service_account.tasks", "roles/iam.serviceAccountUser"),
    },
    "google_service_account.tasks": {(GPU_SERVICE, "roles/run.invoker")},
    "google_service_account.push": {
        (GPU_SERVICE, "roles/run.invoker"),  # single
        (API_SERVICE, "roles/run.invoker"),  # scale-out
    },
    "google_service_account.eventarc": {
        (GPU_SERVICE, "roles/run.invoker"),
        (API_SERVICE, "roles/run.invoker"),
        ("var.project_id", "roles/eventarc.eventReceiver"),
    },
    "google_service_account.dead_letter": {
        ("google_storage_bucket.state", "roles/storage.objectUser"),
        ("google_pubsub_topic.results", "roles/pubsub.publisher"),
        ("google_cloudfunctions2_function.dead_letter", "roles/run.invoker"),
    },
    "google_service_account.builder": {("var.project_id", "roles/run.builder")},
    "local.pubsub_service_agent": {
        ("google_pubsub_topic.dead_letter", "roles/pubsub.publisher"),
        ("google_pubsub_subscription.intake", "roles/pubsub.subscriber"),
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


def invokers_of(tf: Config, service: str) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for name, body in tf.of_type("google_cloud_run_v2_service_iam_member").items()
        if body["role"] == "roles/run.invoker" and referenced(body["name"]) == service
    }


def test_in_scale_out_the_tasks_account_is_the_gpu_services_only_invoker(tf: Config) -> None:
    for name, grant in invokers_of(tf, GPU_SERVICE).items():
        if referenced(grant["member"]) == "google_service_account.tasks":
            assert "count" not in grant  # in every topology
        else:
            assert "local.single_topology" in grant["count"], f"{name} invokes the scale-out worker"


def test_the_api_service_is_invoked_only_by_the_upload_push(tf: Config) -> None:
    members = {referenced(g["member"]) for g in invokers_of(tf, API_SERVICE).values()}

    assert members == {"google_service_account.push", "google_service_account.eventarc"}
    for grant in invokers_of(tf, API_SERVICE).values():
        assert "local.scale_out_topology" in grant["count"]


def test_runtime_accounts_may_mint_tokens_for_the_tasks_account_only(tf: Config) -> None:
    acts_as = {
        name: body
        for name, body in tf.of_type("google_service_account_iam_member").items()
        if body["role"] == "roles/iam.serviceAccountUser"
    }

    assert {referenced(b["member"]) for b in acts_as.values()} == {
        "google_service_account.runtime",
        "google_service_account.api",
    }
    assert {referenced(b["service_account_id"]) for b in acts_as.values()} == {"google_service_account.tasks"}


def test_grants_never_replace_existing_policies(tf: Config) -> None:
    authoritative = [k for k, _ in tf.resources if k.endswith(("_iam_binding", "_iam_policy"))]

    assert authoritative == []


def test_nobody_outside_the_project_is_granted_anything(tf: Config) -> None:
    texts = [item for item in walk(tf.resources) if isinstance(item, str)]

    assert not [t for t in texts if "allUsers" in t or "allAuthenticatedUsers" in t]


# --- the dead-letter function -------------------------------------------------------------------------------
def test_dead_letter_function_is_fed_by_the_dead_letter_topic(tf: Config) -> None:
    function = tf.resource("google_cloudfunctions2_function", "dead_letter")
    trigger = block(function, "event_trigger")

    assert referenced(trigger["pubsub_topic"]) == "google_pubsub_topic.dead_letter"
    assert trigger["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert block(function, "build_config")["entry_point"] == "handle"
    assert (ROOT / "functions" / "dead_letter" / "main.py").is_file()


def test_dead_letter_archive_is_built_from_the_archive_list(tf: Config) -> None:
    archive = tf.data[("archive_file", "dead_letter")]
    source = block(archive, "dynamic")["source"]

    assert source["for_each"] == "${local.dead_letter_archive_files}"
    assert tf.locals["dead_letter_dir"] == "${local.repository_root}/functions/dead_letter"
    assert 'file("${local.dead_letter_dir}/ARCHIVE")' in tf.locals["dead_letter_archive_entries"]
    assert "local.dead_letter_archive_entries" in tf.locals["dead_letter_archive_files"]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="needs the terraform binary")
def test_dead_letter_archive_holds_exactly_what_the_archive_list_names(tmp_path: Path) -> None:
    """function.tf's locals, evaluated by terraform itself (they need no provider), give the zip the same
    files at the same paths as tests/test_job_protocol.py stages from functions/dead_letter/ARCHIVE."""
    lines = (ROOT / "terraform" / "function.tf").read_text(encoding="utf-8").splitlines()
    start = lines.index("locals {")
    end = lines.index("}", start)
    module = tmp_path / "terraform"
    module.mkdir()
    (module / "locals.tf").write_text("\n".join(lines[start : end + 1]) + "\n", encoding="utf-8")
    for top in {path.relative_to(ROOT).parts[0] for path in archive_files().values()}:
        (tmp_path / top).symlink_to(ROOT / top)

    completed = subprocess.run(
        ["terraform", "console"],
        input="jsonencode(local.dead_letter_archive_files)\n",
        cwd=module,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    files = json.loads(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert {name: (module / path).resolve() for name, path in files.items()} == {
        name: path.resolve() for name, path in archive_files().items()
    }


def test_function_build_may_read_its_staged_source_once_iam_settles(tf: Config) -> None:
    function = tf.resource("google_cloudfunctions2_function", "dead_letter")
    sleep = tf.resource("time_sleep", "builder_grants_settle")

    assert referenced(block(function, "build_config")["service_account"]) == "google_service_account.builder"
    assert "${time_sleep.builder_grants_settle}" in function["depends_on"]
    assert referenced(sleep["triggers"]["grant"]) == "google_project_iam_member.builder_builds"
    assert tf.resource("google_project_iam_member", "builder_builds")["role"] == "roles/run.builder"


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


def required_providers(tf: Config) -> dict[str, Any]:
    return block(tf.terraform[0], "required_providers") if "required_providers" in tf.terraform[0] else {}


def test_google_provider_is_7_14_or_later_within_7(tf: Config) -> None:
    assert required_providers(tf)["google"]["version"] == ">= 7.14, < 8"


def test_time_provider_is_declared_for_time_sleep(tf: Config) -> None:
    assert required_providers(tf)["time"]["source"] == "hashicorp/time"


def test_apis_include_cloud_tasks_and_resource_manager(tf: Config) -> None:
    apis = tf.resource("google_project_service", "apis")["for_each"]

    for api in ("cloudtasks.googleapis.com", "cloudresourcemanager.googleapis.com", "run.googleapis.com"):
        assert api in apis


def test_outputs_give_names_url_and_ready_commands(tf: Config) -> None:
    assert {
        "service_url", "worker_url", "work_queue", "inbox_bucket", "state_bucket", "models_bucket", "topics",
        "subscriptions", "upload_command", "upload_command_gcloud", "pull_command",
    } <= set(tf.outputs)  # fmt: skip
    assert "x-goog-meta-model-name:alice" in tf.outputs["upload_command"]["value"]
    assert "--auto-ack" in tf.outputs["pull_command"]["value"]
    assert tf.outputs["service_url"]["value"] == FRONT_URL


# --- deploy.sh ----------------------------------------------------------------------------------------------
def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def plan(*args: str) -> tuple[list[str], str]:
    completed = deploy("--dry-run", "--project", "my-proj", "--region", "europe-west4", "--tag", "t1", *args)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    return lines, "\n".join(line[4:] for line in lines if line.startswith("  | "))  # the build config


REGISTRY = "europe-west4-docker.pkg.dev/my-proj/rvc-trainer"


def test_deploy_builds_the_worker_image_then_applies_it() -> None:
    lines, config = plan()
    build = next(i for i, line in enumerate(lines) if line.startswith("+ gcloud builds submit"))
    final_apply = max(i for i, line in enumerate(lines) if " apply " in line)

    assert "--target, worker," in config
    assert "--target, api," not in config  # single: the GPU service is the front
    assert f'"{REGISTRY}/worker:t1"' in config
    assert final_apply > build
    assert f"worker_image={REGISTRY}/worker:t1" in lines[final_apply]
    assert "topology=single" in lines[final_apply]
    assert "api_image" not in lines[final_apply]
    assert "-target" not in lines[final_apply]


def test_deploy_scale_out_builds_both_images() -> None:
    lines, config = plan("--topology", "scale-out")
    final_apply = lines[max(i for i, line in enumerate(lines) if " apply " in line)]

    assert "--target, worker," in config and "--target, api," in config
    assert f"worker_image={REGISTRY}/worker:t1" in final_apply
    assert f"api_image={REGISTRY}/api:t1" in final_apply
    assert "topology=scale-out" in final_apply


def test_deploy_builds_in_its_own_region_as_the_build_account() -> None:
    lines, config = plan("--build-region", "us-east1")
    build = next(line for line in lines if line.startswith("+ gcloud builds submit"))

    assert "--region us-east1" in build
    builder = "rvc-builder@my-proj.iam.gserviceaccount.com"
    assert f"serviceAccount: projects/my-proj/serviceAccounts/{builder}" in config
    assert "logging: CLOUD_LOGGING_ONLY" in config  # required with a user-specified build account
    first_apply = next(line for line in lines if " apply " in line)
    assert "-target=time_sleep.builder_grants_settle" in first_apply  # the account exists before the build


def test_deploy_build_region_defaults_to_us_central1() -> None:
    lines, _ = plan()

    assert "--region us-central1" in next(line for line in lines if line.startswith("+ gcloud builds submit"))


def test_deploy_refuses_an_unknown_topology() -> None:
    completed = deploy("--dry-run", "--project", "p", "--topology", "two")

    assert completed.returncode == 2
    assert "single or scale-out" in completed.stderr


def test_deploy_without_a_project_refuses_to_start() -> None:
    completed = deploy("--dry-run")

    assert completed.returncode == 2
    assert "no project" in completed.stderr


# --- the image ---------------------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, str]:
    """Stage name → its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\S+)\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize(("target", "role"), [("worker", "all"), ("api", "api")])
def test_image_targets_serve_their_role(target: str, role: str) -> None:
    stage = dockerfile_stages()[target]

    assert f'CMD ["python", "-m", "consumer", "serve", "--role", "{role}"]' in stage


def test_api_image_installs_no_torch() -> None:
    stages = dockerfile_stages()
    api_pins = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements-api.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    pins = {line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}

    assert "requirements-api.txt" in stages["api-builder"]
    assert "requirements.txt" not in stages["api-builder"].replace("requirements-api.txt", "")
    assert "COPY --from=builder" not in stages["api"] and "CUDA_BASE" not in stages["api"]
    assert not [p for p in api_pins if p.startswith(("torch", "faiss", "librosa"))]
    assert set(api_pins) <= pins  # the same versions as the worker's, only fewer


def test_image_build_context_includes_the_api_requirements() -> None:
    allowed = (ROOT / ".dockerignore").read_text().splitlines()

    assert "!requirements-api.txt" in allowed and "!requirements.txt" in allowed


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
