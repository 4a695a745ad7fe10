"""The api image against the worker image: installed size and import time (an estimate, no Docker).

    python bench/images.py [--runs 5] [--json]

Size: the installed size of the distributions each image installs, from the files every
distribution lists in its metadata (importlib.metadata), requirements resolved transitively in this
virtualenv: requirements-api.txt (the `api` target) against requirements.txt (the `worker` target).
Not counted: the base image (Python itself), pip's caches, the project's own source. An estimate:
torch here may be a CPU or a CUDA build, whatever this venv holds (the CUDA libraries come as
`nvidia-*` distributions, counted when present).

Import time: a fresh interpreter imports `consumer.app` and `consumer.services`, builds the
services for a role with file:// buckets and the local task queue (Pub/Sub messaging with an
emulator address: the client is created, nothing is contacted) and creates the app. For role api
it asserts that torch was not imported; role worker also imports what its first slice needs
(rvc_core.job_stages, .train, .models, .index, .infer: torch, torchaudio, faiss). Median of
`--runs` runs after one untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_FALLBACK = ["flask", "gunicorn", "tenacity", "cloudevents", "google-cloud-storage",
                "google-cloud-pubsub", "google-cloud-tasks", "numpy", "tqdm"]  # fmt: skip


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(_canonical(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]))
    return names


def closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """The installed distributions `roots` need, transitively (markers evaluated here, no extras);
    and the names not installed."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    missing: set[str] = set()
    todo = list(roots)
    while todo:
        name = _canonical(todo.pop())
        if name in seen or name in missing:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        seen.add(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen, missing


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for f in dist.files or []:
        try:
            total += Path(dist.locate_file(f)).stat().st_size
        except OSError:
            continue
    return total


IMPORT_SNIPPET = r"""
import sys, time, json, os
started = time.perf_counter()
import consumer.app
from consumer.services import build_services
from consumer.settings import Settings
root = sys.argv[2]
settings = Settings.from_env({
    "SERVICE_ROLE": sys.argv[1], "STATE_BUCKET": f"file://{root}/state", "MODELS_BUCKET": f"file://{root}/models",
    "TASK_QUEUE": f"file://{root}/tasks", "MESSAGING": "pubsub", "GOOGLE_CLOUD_PROJECT": "bench",
    "DEVICE": "cpu", "WORK_ROOT": f"{root}/scratch",
})
os.environ.setdefault("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
app = consumer.app.create_app(build_services(settings), handle_sigterm=False)
built = time.perf_counter()
if sys.argv[1] == "api":
    assert "torch" not in sys.modules, "role api imported torch"
else:
    # what a first slice imports
    import rvc_core.job_stages, rvc_core.train, rvc_core.models, rvc_core.index, rvc_core.infer
first_slice = time.perf_counter()
print(json.dumps({"app_s": built - started, "first_slice_s": first_slice - started,
                  "torch": "torch" in sys.modules, "modules": len(sys.modules)}))
"""


def import_time(python: str, role: str, runs: int) -> dict[str, float | int | bool]:
    samples = []
    with tempfile.TemporaryDirectory(prefix="rvc-bench-images-") as tmp:
        for i in range(runs + 1):
            started = __import__("time").perf_counter()
            out = subprocess.run(
                [python, "-c", IMPORT_SNIPPET, role, tmp],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            wall = __import__("time").perf_counter() - started
            if i:  # the first run warms the page cache
                samples.append({**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall})
    return {
        "app_s_p50": statistics.median(s["app_s"] for s in samples),
        "first_slice_s_p50": statistics.median(s["first_slice_s"] for s in samples),
        "process_s_p50": statistics.median(s["process_s"] for s in samples),
        "torch": bool(samples[0]["torch"]),
        "modules": int(samples[0]["modules"]),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    api_file = ROOT / "requirements-api.txt"
    api_roots = requirement_names(api_file) if api_file.exists() else API_FALLBACK
    images = {
        "api": api_roots,
        "worker": requirement_names(ROOT / "requirements.txt"),
    }
    out: dict[str, dict] = {}
    for image, roots in images.items():
        dists, missing = closure(roots)
        sizes = {d: installed_bytes(d) for d in dists}
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        out[image] = {
            "requirements": str(
                api_file.name
                if image == "api" and api_file.exists()
                else ("built-in list" if image == "api" else "requirements.txt")
            ),
            "distributions": len(dists),
            "installed_mib": sum(sizes.values()) / 2**20,
            "biggest": {k: round(v / 2**20, 1) for k, v in biggest},
            "not_installed": sorted(missing),
        }
    for role, image in (("api", "api"), ("worker", "worker")):
        out[image]["import"] = import_time(sys.executable, role, args.runs)
    print("images (estimate: installed size of the distributions each target installs, this venv; "
          "no base image; import = fresh interpreter, median)")  # fmt: skip
    rows = [
        [
            "image",
            "from",
            "dists",
            "MiB",
            "app s",
            "1st slice s",
            "process s",
            "torch",
            "modules",
            "biggest MiB",
        ]
    ]
    for image, o in out.items():
        imp = o["import"]
        rows.append([
            image, o["requirements"], str(o["distributions"]), f"{o['installed_mib']:.0f}",
            f"{imp['app_s_p50']:.2f}", f"{imp['first_slice_s_p50']:.2f}", f"{imp['process_s_p50']:.2f}",
            str(imp["torch"]), str(imp["modules"]),
            ", ".join(f"{k} {v:.0f}" for k, v in o["biggest"].items()),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows))
    for image, o in out.items():
        if o["not_installed"]:
            print(f"{image}: not installed here, not counted: {', '.join(o['not_installed'])}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
