"""Continue training (issue 10): every success stores RVC's training checkpoint pair G_<n>.pth /
D_<n>.pth, and `base-model=<name>` starts a job from the latest success of that model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from consumer.adapters.storage import open_store
from consumer.local.demo import LocalStack
from rvc_core.continue_from import write_checkpoint_pair
from rvc_core.jobspec import JobEnvironment, JobProgress, JobSpec
from rvc_core.models import build_discriminator, build_generator, load_pretrained
from rvc_core.testing import simple_dataset_zip
from rvc_core.train.loop import adamw
from tests.factories_consumer import FakeTrainer

MANIFESTS = Path(__file__).resolve().parent / "fixtures" / "rvc_state_dicts"
RVC_KEYS = {"model", "iteration", "optimizer", "learning_rate"}


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    """As tests/test_models.py reads them: `name<TAB>AxBxC` per line."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            shapes[key] = tuple(int(n) for n in shape.split("x"))
    return shapes


def fake_latest(path: Path, generator: Any, discriminator: Any, *, step: int, epoch: int) -> Path:
    """A trainer checkpoint (`latest.pt`) with the keys the pair is made from, after one optimiser
    step each so the optimiser states are not empty."""
    optims = []
    for model in (generator, discriminator):
        params = [p for p in model.parameters() if p.requires_grad]
        optim = adamw(params, 1e-4)
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        optim.step()
        optims.append(optim)
    torch.save(
        {
            "format": 1,
            "run": {"step": step, "epoch": epoch},
            "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(),
            "optim_g": optims[0].state_dict(),
            "optim_d": optims[1].state_dict(),
        },
        path,
    )
    return path


def test_manifest_reader_matches_a_known_line() -> None:
    assert read_manifest("G_v2_40k_f0")["emb_g.weight"] == (109, 256)


def test_full_size_pair_has_rvc_names_shapes_and_layout_and_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g, d = build_generator("v2", 40000), build_discriminator("v2")
    latest = fake_latest(tmp_path / "latest.pt", g, d, step=1234, epoch=7)
    pair = write_checkpoint_pair(latest, tmp_path / "out")
    assert (pair.generator.name, pair.discriminator.name) == ("G_1234.pth", "D_1234.pth")
    for path, manifest, model in ((pair.generator, "G_v2_40k_f0", g), (pair.discriminator, "D_v2", d)):
        saved = torch.load(path, map_location="cpu", weights_only=True)  # plain values only
        assert set(saved) == RVC_KEYS
        assert saved["iteration"] == 7 and saved["learning_rate"] == pytest.approx(1e-4)
        # Exactly RVC's names and shapes (weight_g / weight_v, enc_q included), in fp32.
        assert {k: tuple(v.shape) for k, v in saved["model"].items()} == read_manifest(manifest)
        assert all(v.dtype == torch.float32 for v in saved["model"].values())
        optimizer = saved["optimizer"]
        params = [p for p in model.parameters() if p.requires_grad]
        assert len(optimizer["state"]) == len(params)
        assert optimizer["param_groups"][0]["betas"] == (0.8, 0.99)
        # Our optimiser takes the state back (a resume from the pair would work).
        adamw(params, 1e-4).load_state_dict(optimizer)
    # The existing pretrained loader (strict) takes both, with the trained values.
    g2, d2 = build_generator("v2", 40000), build_discriminator("v2")
    load_pretrained(g2, pair.generator)
    load_pretrained(d2, pair.discriminator)
    for ours, theirs in ((g, g2), (d, d2)):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_pair_of_another_step_is_replaced_and_an_existing_one_kept(tmp_path: Path) -> None:
    g, d = build_generator("v2", 40000, preset="tiny"), build_discriminator("v2", preset="tiny")
    out = tmp_path / "out"
    write_checkpoint_pair(fake_latest(tmp_path / "a.pt", g, d, step=4, epoch=2), out)
    pair = write_checkpoint_pair(fake_latest(tmp_path / "b.pt", g, d, step=8, epoch=4), out)
    assert sorted(p.name for p in out.iterdir()) == ["D_8.pth", "G_8.pth"]
    before = pair.generator.stat().st_mtime_ns
    write_checkpoint_pair(tmp_path / "b.pt", out)
    assert pair.generator.stat().st_mtime_ns == before


# --- a job continued from another starts at the other's loss level -----------------------------------
@pytest.mark.slow
def test_job_continued_from_another_starts_at_its_loss_level(tmp_path: Path) -> None:
    dataset = simple_dataset_zip(tmp_path / "voice.zip", files=3, seconds=6.0)
    env = JobEnvironment(assets="none", pretrained="none", workers=1)
    spec_a = JobSpec(model_name="a", epochs=5, preset="tiny", f0_method="pm", export="final")
    a = run(dataset, tmp_path / "a", spec_a, env)
    assert a.artifacts["G"].name == f"G_{a.step}.pth" and a.artifacts["D"].name == f"D_{a.step}.pth"
    saved = torch.load(a.artifacts["G"], map_location="cpu", weights_only=True)
    assert saved["iteration"] == 5 and set(saved) == RVC_KEYS

    env_b = JobEnvironment(
        assets="none",
        pretrained="none",
        workers=1,
        base_g=str(a.artifacts["G"]),
        base_d=str(a.artifacts["D"]),
    )
    spec_b = JobSpec(model_name="b", epochs=1, preset="tiny", f0_method="pm", base_model="a")
    b = run(dataset, tmp_path / "b", spec_b, env_b)
    # The same dataset and seed: the same validation segments and windows for both jobs.
    a_first, a_last = a.metrics["history"][0], a.metrics["history"][-1]
    b_first = b.metrics["history"][0]
    a_val = [h["validation_mel"] for h in a.metrics["history"]]
    assert a_val[-1] < a_val[0], a_val  # A learned something to continue from
    gained = a_first["validation_mel"] - a_last["validation_mel"]
    # B starts where A ended (one more epoch of training: at or below A's last), not from scratch.
    assert b_first["validation_mel"] < a_first["validation_mel"] - 0.75 * gained, (a_val, b_first)
    assert b_first["losses"]["g_mel"] < a_first["losses"]["g_mel"], (a_first, b_first)


def run(dataset: Path, root: Path, spec: JobSpec, env: JobEnvironment) -> JobProgress:
    from rvc_core.job import run_job

    result = run_job(dataset, root / "work", root / "out", spec, env)
    assert result.status == "finished"
    return result


# --- the service: base-model at intake, the pair uploaded beside the model --------------------------
@dataclass
class PairTrainer(FakeTrainer):
    """The fake trainer, also delivering a G/D pair and remembering the environments it was given."""

    envs: list[JobEnvironment] = field(default_factory=list)

    def __call__(self, dataset_zip: Path, workdir: Path, outdir: Path, spec: JobSpec, env: JobEnvironment,
                 **kwargs: Any) -> JobProgress:  # fmt: skip
        self.envs.append(env)
        if env.base_g:  # what a real start from the pair reads
            assert Path(env.base_g).read_bytes() == b"G of " + spec.base_model.encode()  # type: ignore[union-attr]
        result = super().__call__(dataset_zip, workdir, outdir, spec, env, **kwargs)
        if result.status == "finished":
            for key in ("G", "D"):
                path = Path(outdir) / f"{key}_{result.step}.pth"
                path.write_bytes(f"{key} of {spec.model_name}".encode())
                result.artifacts[key] = path
        return result


def stack_with(tmp_path: Path) -> tuple[LocalStack, PairTrainer]:
    trainer = PairTrainer()
    return LocalStack(tmp_path / "stack", env={"SLICE_SECONDS": "30"}, trainer=trainer), trainer


def train(stack: LocalStack, dataset: Path, metadata: dict[str, str]) -> list[Any]:
    before = len(stack.finals())
    stack.upload(dataset, f"datasets/{metadata['model-name']}.zip", metadata)
    stack.run(timeout=60)
    return stack.finals()[before:]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return simple_dataset_zip(tmp_path / "upload" / "alice.zip", files=2, seconds=1.0)


def test_base_model_job_gets_the_latest_success_pair(tmp_path: Path, dataset: Path) -> None:
    stack, trainer = stack_with(tmp_path)
    [first] = train(stack, dataset, {"model-name": "alice", "epochs": "2"})
    assert first.kind == "succeeded"
    artifacts = first.data["artifacts"]
    store = open_store(stack.settings.models_url)
    assert artifacts["G"].endswith("/G_6.pth") and store.stat(artifacts["G"]) is not None
    assert store.stat(artifacts["D"]) is not None
    latest = json.loads(store.read_bytes(f"{stack.settings.models_url}/alice/latest.json")[0])
    assert latest["spec"]["sample_rate"] == 40000 and latest["spec"]["version"] == "v2"

    [second] = train(stack, dataset, {"model-name": "bob", "epochs": "2", "base-model": "alice"})
    assert second.kind == "succeeded"
    spec = second.data["spec"]
    assert (spec["base_model"], spec["base_g"], spec["base_d"]) == ("alice", artifacts["G"], artifacts["D"])
    env = trainer.envs[-1]
    assert env.base_g and Path(env.base_g).name == "G_6.pth" and Path(env.base_d or "").name == "D_6.pth"
    assert trainer.envs[0].base_g is None


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"base-model": "nobody"}, ["'nobody'", "no successful job"]),
        ({"base-model": "alice", "sample-rate": "48k"}, ["sample_rate 40000 (base) vs 48000"]),
        ({"base-model": "alice", "version": "v1"}, ["version 'v2' (base) vs 'v1'"]),
    ],
)
def test_missing_or_mismatched_base_model_fails_once_at_intake(
    tmp_path: Path, dataset: Path, metadata: dict[str, str], named: list[str]
) -> None:
    stack, trainer = stack_with(tmp_path)
    train(stack, dataset, {"model-name": "alice", "epochs": "2"})
    calls = len(trainer.calls)
    finals = train(stack, dataset, {"model-name": "bob", **metadata})
    assert [(f.kind, f.data["error"]["code"], f.data["error"]["stage"]) for f in finals] == [
        ("failed", "invalid_metadata", "intake")
    ]
    for words in named:
        assert words in finals[0].data["error"]["message"]
    assert len(trainer.calls) == calls  # nothing was trained


def test_train_endpoint_takes_base_model_and_refuses_a_missing_one_at_once(
    tmp_path: Path, dataset: Path
) -> None:
    stack, trainer = stack_with(tmp_path)
    train(stack, dataset, {"model-name": "alice", "epochs": "2"})
    target = stack.root / "inbox" / "datasets" / "carol.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(dataset.read_bytes())
    body = {"dataset_url": f"file://{target}", "model_name": "carol", "epochs": 2}
    missing = stack.client.post("/train", json={**body, "base_model": "nobody"})
    assert missing.status_code == 400 and missing.get_json()["error"]["code"] == "invalid_metadata"
    answer = stack.client.post("/train", json={**body, "base_model": "alice"})
    assert answer.status_code == 202
    stack.run(timeout=60)
    [final] = stack.finals(answer.get_json()["job_id"])
    assert final.kind == "succeeded" and final.data["spec"]["base_model"] == "alice"
    assert trainer.envs[-1].base_g is not None
