"""Issue 9, the trust boundary: what `/train` may read and write, which bucket's uploads `/events`
takes, how large a dataset may be, and who may push to `/events` and `/work`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.adapters.storage import ObjectInfo
from consumer.app import create_app
from consumer.edge.deliveries import ObjectFinalized
from consumer.edge.identity import IdentityVerifier
from consumer.edge.locations import check_dataset_url, check_output_url, output_bucket_problem
from consumer.errors import SettingsError
from consumer.jobs.intake import Intake, screen
from consumer.local.demo import LocalStack
from consumer.settings import Settings
from rvc_core.testing import simple_dataset_zip
from tests.factories_consumer import FakeTrainer

PUSHER = "push@p.iam.gserviceaccount.com"
TASKS = "tasks@p.iam.gserviceaccount.com"
JOB = "0123456789abcdef"


def make_stack(root: Path, **env: str) -> LocalStack:
    return LocalStack(root, env={"SLICE_SECONDS": "30", **env}, trainer=FakeTrainer())


@pytest.fixture
def stack(tmp_path: Path) -> LocalStack:
    return make_stack(tmp_path / "stack")


@pytest.fixture
def inbox_zip(stack: LocalStack) -> Path:
    """A dataset inside the local stack's inbox bucket (not under its prefix: no upload event)."""
    return simple_dataset_zip(stack.root / "inbox" / "train" / "alice.zip", files=2, seconds=1.0)


def train(stack: LocalStack, **body: Any) -> tuple[int, dict[str, Any]]:
    answer = stack.client.post("/train", json=body)
    return answer.status_code, answer.get_json()


def jobs_made(stack: LocalStack) -> list[Path]:
    return list((stack.root / "state").rglob("job.json"))


def gs_settings(**extra: Any) -> Settings:
    return Settings(
        state_bucket="gs://state",
        models_bucket="gs://models",
        task_queue="file:///tmp/unused-tasks",
        inbox_bucket="inbox",
        **extra,
    )


# --- /train: where the dataset may come from ------------------------------------------------------------
def test_train_refuses_a_file_outside_the_service_root(stack: LocalStack) -> None:
    status, body = train(stack, dataset_url="file:///etc/passwd", model_name="alice")
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert str(stack.root) in body["error"]["message"]
    assert jobs_made(stack) == []


def test_train_refuses_a_zip_elsewhere_on_the_servers_disk(stack: LocalStack, tmp_path: Path) -> None:
    outside = simple_dataset_zip(tmp_path / "elsewhere" / "alice.zip", files=2, seconds=1.0)
    status, body = train(stack, dataset_url=f"file://{outside}", model_name="alice")
    assert status == 400 and "the service's buckets" in body["error"]["message"]
    assert jobs_made(stack) == []


def test_train_refuses_dot_dot_and_symlinks_that_leave_the_root(stack: LocalStack, tmp_path: Path) -> None:
    outside = simple_dataset_zip(tmp_path / "elsewhere" / "alice.zip", files=2, seconds=1.0)
    link = stack.root / "inbox" / "link.zip"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    assert train(stack, dataset_url=f"file://{link}")[0] == 400
    dotted = f"file://{stack.root}/inbox/../../elsewhere/alice.zip"
    status, body = train(stack, dataset_url=dotted)
    assert status == 400 and "'..'" in body["error"]["message"]
    assert jobs_made(stack) == []


def test_train_refuses_to_read_the_state_bucket(stack: LocalStack, inbox_zip: Path) -> None:
    state_file = stack.root / "state" / "jobs" / "x.zip"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_bytes(inbox_zip.read_bytes())
    status, body = train(stack, dataset_url=f"file://{state_file}")
    assert status == 400 and "state bucket" in body["error"]["message"]


def test_train_inside_the_root_runs_and_writes_its_output(stack: LocalStack, inbox_zip: Path) -> None:
    output = f"file://{stack.root}/exports/alice-model.zip"
    status, body = train(stack, dataset_url=f"file://{inbox_zip}", output_url=output, model_name="alice")
    assert status == 202, body
    stack.run(timeout=60)
    assert [f.kind for f in stack.finals(body["job_id"])] == ["succeeded"]
    assert (stack.root / "exports" / "alice-model.zip").exists()


# --- /train: where the output may go ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("models/alice/" + JOB + "/model.pth", "belongs to the jobs"),
        ("models/alice/latest.json", "belongs to the jobs"),
        ("models/bob/alice.zip", "this model's own folder"),
        ("models/alice.zip", "this model's own folder"),
        ("state/jobs/" + JOB + "/job.json", "state bucket"),
        ("inbox/datasets/again.zip", "start another job"),
        ("../outside.zip", "'..'"),
    ],
)
def test_train_refuses_outputs_that_belong_to_others(
    stack: LocalStack, inbox_zip: Path, where: str, says: str
) -> None:
    output = f"file://{stack.root}/{where}"
    status, body = train(stack, dataset_url=f"file://{inbox_zip}", output_url=output, model_name="alice")
    assert status == 400 and says in body["error"]["message"], body
    assert jobs_made(stack) == []


def test_train_may_write_into_its_own_model_folder(stack: LocalStack, inbox_zip: Path) -> None:
    output = f"file://{stack.root}/models/alice/exports/"
    status, body = train(stack, dataset_url=f"file://{inbox_zip}", output_url=output, model_name="alice")
    assert status == 202, body


def test_gs_dataset_buckets_are_the_inbox_and_the_configured_ones() -> None:
    settings = gs_settings()
    assert check_dataset_url("gs://inbox/datasets/a.zip", settings) is None
    assert "gs://inbox" in str(check_dataset_url("gs://other/a.zip", settings))
    assert "not only a bucket" in str(check_dataset_url("gs://inbox", settings))
    assert "not only a bucket" in str(check_dataset_url("gs://inbox/", settings))
    assert "gs://" in str(check_dataset_url("file:///etc/passwd", settings))
    assert "state bucket" in str(check_dataset_url("gs://state/jobs/x/job.json", settings))
    assert check_dataset_url("gs://other/a.zip", gs_settings(train_dataset_buckets=("other",))) is None


def test_gs_output_buckets_are_the_models_bucket_and_the_configured_ones() -> None:
    settings = gs_settings()
    assert check_output_url("gs://models/alice/out.zip", settings, "alice") is None
    assert "own folder" in str(check_output_url("gs://models/bob/out.zip", settings, "alice"))
    assert "belongs to the jobs" in str(
        check_output_url(f"gs://models/alice/{JOB}/model.pth", settings, "alice")
    )
    assert "state bucket" in str(check_output_url("gs://state/x.zip", settings, "alice"))
    assert "gs://models" in str(check_output_url("gs://elsewhere/x.zip", settings, "alice"))
    assert "start another job" in str(
        check_output_url("gs://inbox/datasets/x.zip", gs_settings(train_output_buckets=("inbox",)), "alice")
    )
    assert (
        check_output_url("gs://elsewhere/x.zip", gs_settings(train_output_buckets=("elsewhere",)), "a")
        is None
    )


class _Blobs:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def list_blobs(self, bucket: str, **_: Any) -> list[Any]:
        if self.error:
            raise self.error
        return []


class _GsStore:
    def __init__(self, error: Exception | None = None) -> None:
        self.client = _Blobs(error)

    def stat(self, uri: str) -> ObjectInfo | None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return ObjectInfo(uri=uri, bucket=bucket, name=name, generation=1, size=1000)


def gs_intake(settings: Settings, store: _GsStore) -> Intake:
    # Nothing but the refusals is exercised: no record, result or task may be touched.
    return Intake(settings, None, None, None, None, lambda url: store)  # type: ignore[arg-type]


def test_a_missing_output_bucket_is_refused_at_request_time() -> None:
    from google.api_core import exceptions as gexc

    settings = gs_settings(train_output_buckets=("gone",))
    intake = gs_intake(settings, _GsStore(gexc.NotFound("no such bucket")))
    result = intake.accept_request({"dataset_url": "gs://inbox/a.zip", "output_url": "gs://gone/a/b.zip"})
    assert result.outcome == "rejected" and "gs://gone does not exist" in result.reason
    forbidden = gs_intake(settings, _GsStore(gexc.Forbidden("no")))
    result = forbidden.accept_request({"dataset_url": "gs://inbox/a.zip", "output_url": "gs://gone/b.zip"})
    assert result.outcome == "rejected" and "not open to" in result.reason
    assert output_bucket_problem(_GsStore(), "gs://gone/a.zip", settings) is None  # type: ignore[arg-type]


# --- /train: the request itself ------------------------------------------------------------------------
def test_train_refuses_a_null_model_name(stack: LocalStack, inbox_zip: Path) -> None:
    status, body = train(stack, dataset_url=f"file://{inbox_zip}", model_name=None)
    assert status == 400 and "model_name" in body["error"]["message"]
    assert jobs_made(stack) == []


def test_train_refuses_a_bucket_without_an_object(tmp_path: Path) -> None:
    intake = gs_intake(gs_settings(), _GsStore())
    result = intake.accept_request({"dataset_url": "gs://inbox"})
    assert result.outcome == "rejected" and result.error is not None
    assert result.error["code"] == "invalid_request" and "not only a bucket" in result.reason


def test_train_refuses_a_body_that_is_not_sent_as_json(stack: LocalStack, inbox_zip: Path) -> None:
    payload = json.dumps({"dataset_url": f"file://{inbox_zip}"})
    answer = stack.client.post("/train", data=payload, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400
    assert "application/json" in answer.get_json()["error"]["message"]
    assert jobs_made(stack) == []


def test_train_refuses_a_dataset_over_the_limit(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack", MAX_DATASET_BYTES="2048")
    dataset = simple_dataset_zip(stack.root / "inbox" / "big.zip", files=2, seconds=1.0)
    status, body = train(stack, dataset_url=f"file://{dataset}")
    assert status == 400 and body["error"]["code"] == "dataset_too_large"
    assert "MAX_DATASET_BYTES=2048" in body["error"]["message"]


# --- /events: the inbox bucket and the size --------------------------------------------------------
def finalized(bucket: str, name: str = "datasets/a.zip", size: int | None = 10) -> ObjectFinalized:
    return ObjectFinalized(bucket=bucket, name=name, generation=1, metadata={}, size=size)


def test_events_take_only_the_inbox_bucket() -> None:
    settings = gs_settings()
    assert screen(finalized("inbox"), settings) is None
    ignored = screen(finalized("elsewhere"), settings)
    assert ignored is not None and "INBOX_BUCKET" in ignored.reason


def test_local_stack_inbox_is_the_sibling_folder(stack: LocalStack) -> None:
    assert stack.settings.inbox_bucket_name == "inbox"
    assert screen(finalized("other"), stack.settings) is not None


def test_an_upload_from_another_bucket_starts_nothing(stack: LocalStack, inbox_zip: Path) -> None:
    event = {"bucket": "other", "name": "datasets/a.zip", "generation": "1", "metadata": {}, "size": "10"}
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//storage.googleapis.com/projects/_/buckets/other",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "Content-Type": "application/json",
    }
    answer = stack.client.post("/events", data=json.dumps(event), headers=headers)
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "ignored"
    assert jobs_made(stack) == []


def test_an_upload_over_the_limit_fails_once_before_any_work(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack", MAX_DATASET_BYTES="2048")
    dataset = simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)
    stack.upload(dataset, "datasets/alice.zip", {"model-name": "alice"})
    dispatched = stack.run(timeout=30)
    assert dispatched == 0  # no slice ever started
    finals = stack.finals()
    assert [f.kind for f in finals] == ["failed"]
    error = finals[0].data["error"]
    assert error["code"] == "dataset_too_large" and "MAX_DATASET_BYTES=2048" in error["message"]
    assert error["retryable"] is False and finals[0].data["model_name"] == "alice"


def test_a_dataset_longer_than_max_audio_minutes_fails_once_before_preparing(tmp_path: Path) -> None:
    # The real run_job (tiny preset, random networks): the length is read from the files' headers.
    stack = LocalStack(tmp_path / "stack", env={"SLICE_SECONDS": "30", "MAX_AUDIO_MINUTES": "0.1"})
    dataset = simple_dataset_zip(tmp_path / "upload" / "long.zip", files=3, seconds=6.0)  # 18 s > 6 s
    stack.upload(dataset, "datasets/long.zip", {"model-name": "long"})
    stack.run(timeout=60)
    finals = stack.finals()
    assert [f.kind for f in finals] == ["failed"]
    error = finals[0].data["error"]
    assert error["code"] == "too_much_audio" and error["retryable"] is False
    assert "0.3 minutes" in error["message"] and "at most 0.1 minutes" in error["message"]
    assert list((stack.root / "models").rglob("*.*")) == []
    assert not list((stack.root / "scratch").rglob("*.wav"))  # no segment was ever written


# --- /work: the job id -------------------------------------------------------------------------------
@pytest.mark.parametrize("job_id", ["../../etc/passwd", "ABCDEF0123456789", "0123", ""])
def test_work_drops_a_token_whose_job_id_is_not_one(stack: LocalStack, job_id: str) -> None:
    answer = stack.client.post("/work", data=json.dumps({"job_id": job_id, "seq": 0}))
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "malformed"
    assert not (stack.root / "state" / "jobs").exists() or jobs_made(stack) == []


# --- settings ---------------------------------------------------------------------------------------------
def test_trust_settings_parse_and_validate(tmp_path: Path) -> None:
    base = {"STATE_BUCKET": f"file://{tmp_path}/state", "MODELS_BUCKET": f"file://{tmp_path}/models"}
    env = {**base, "MESSAGING": "local"}
    settings = Settings.from_env(
        {
            **env,
            "TRAIN_DATASET_BUCKETS": "gs://a, b",
            "INBOX_BUCKET": "gs://in",
            "REQUIRE_PUSH_IDENTITY": "no",
        }
    )
    assert settings.train_dataset_buckets == ("a", "b") and settings.inbox_bucket_name == "in"
    assert settings.max_dataset_bytes > 0  # derived from the instance memory
    assert settings.max_audio_minutes >= 10  # the same, never under 10 minutes
    assert Settings.from_env({**env, "MAX_AUDIO_MINUTES": "45"}).max_audio_minutes == 45
    with pytest.raises(SettingsError, match="MAX_AUDIO_MINUTES"):
        Settings.from_env({**env, "MAX_AUDIO_MINUTES": "-1"})
    with pytest.raises(SettingsError, match="PUSH_SERVICE_ACCOUNT"):
        Settings.from_env({**env, "REQUIRE_PUSH_IDENTITY": "true", "TASKS_SERVICE_ACCOUNT": TASKS})
    with pytest.raises(SettingsError, match="REQUIRE_PUSH_IDENTITY"):
        Settings.from_env({**env, "REQUIRE_PUSH_IDENTITY": "maybe"})
    with pytest.raises(SettingsError, match="TRAIN_OUTPUT_BUCKETS"):
        Settings.from_env({**env, "TRAIN_OUTPUT_BUCKETS": "file:///x"})


# --- who may push -------------------------------------------------------------------------------------
class Signer:
    """A local stand-in for Google's token signer: an RSA key, its public key as the 'certs'."""

    def __init__(self, kid: str = "k1") -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from google.auth import crypt

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.kid = kid
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.certs = {kid: public.decode()}

    def token(self, email: str, *, audience: str = "https://svc.example", **claims: Any) -> str:
        from google.auth import jwt

        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "iat": now,
            "exp": now + 600,
            "sub": "1",
            "email": email,
            "email_verified": True,
            **claims,
        }
        return jwt.encode(self.signer, payload).decode()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def guarded(tmp_path: Path, signer: Signer) -> tuple[Any, list[int]]:
    stack = make_stack(
        tmp_path / "stack",
        REQUIRE_PUSH_IDENTITY="true",
        PUSH_SERVICE_ACCOUNT=PUSHER,
        TASKS_SERVICE_ACCOUNT=TASKS,
        PUSH_AUDIENCE="https://svc.example",
        TASKS_AUDIENCE="https://svc.example",
    )
    fetched: list[int] = []

    def fetch() -> tuple[dict[str, str], float]:
        fetched.append(1)
        return signer.certs, 3600.0

    app = create_app(stack.services, handle_sigterm=False, identity=IdentityVerifier(fetch_certs=fetch))
    return app.test_client(), fetched


def post(client: Any, path: str, token: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"job_id": JOB, "seq": 0} if path == "/work" else {"hello": "world"}
    return client.post(path, data=json.dumps(body), headers=headers)


def test_events_accept_the_push_account_only(guarded: tuple[Any, list[int]], signer: Signer) -> None:
    client, fetched = guarded
    assert post(client, "/events", signer.token(PUSHER)).status_code == 200
    missing = post(client, "/events", None)
    assert missing.status_code == 401 and "Bearer" in missing.get_json()["error"]["message"]
    other = post(client, "/events", signer.token(TASKS))
    assert other.status_code == 403 and PUSHER in other.get_json()["error"]["message"]
    assert post(client, "/events", signer.token(PUSHER)).status_code == 200
    assert fetched == [1]  # Google's certificates are fetched once and cached


def test_work_accepts_the_tasks_account_only(guarded: tuple[Any, list[int]], signer: Signer) -> None:
    client, _ = guarded
    assert post(client, "/work", signer.token(PUSHER)).status_code == 403
    assert post(client, "/work", None).status_code == 401
    assert post(client, "/work", signer.token(TASKS)).status_code not in (401, 403)


def test_forged_expired_or_misaddressed_tokens_are_refused(
    guarded: tuple[Any, list[int]], signer: Signer
) -> None:
    client, _ = guarded
    forger = Signer(kid=signer.kid)  # the same key id, another key
    assert post(client, "/events", forger.token(PUSHER)).status_code == 401
    past = int(time.time()) - 7200
    assert post(client, "/events", signer.token(PUSHER, iat=past, exp=past + 600)).status_code == 401
    assert post(client, "/events", signer.token(PUSHER, audience="https://other.example")).status_code == 401
    assert post(client, "/events", signer.token(PUSHER, iss="https://evil.example")).status_code == 401
    assert post(client, "/events", signer.token(PUSHER, email_verified=False)).status_code == 403
    assert post(client, "/events", "not-a-jwt").status_code == 401


def test_unreachable_certificates_answer_503_so_the_push_is_retried(tmp_path: Path, signer: Signer) -> None:
    from consumer.edge.identity import CertsUnavailable

    stack = make_stack(
        tmp_path / "stack",
        REQUIRE_PUSH_IDENTITY="true",
        PUSH_SERVICE_ACCOUNT=PUSHER,
        TASKS_SERVICE_ACCOUNT=TASKS,
    )

    def fetch() -> tuple[dict[str, str], float]:
        raise CertsUnavailable("offline")

    client = create_app(stack.services, handle_sigterm=False, identity=IdentityVerifier(fetch)).test_client()
    assert post(client, "/events", signer.token(PUSHER)).status_code == 503


def test_identity_is_not_checked_when_not_required(stack: LocalStack) -> None:
    assert post(stack.client, "/events", None).status_code == 200
