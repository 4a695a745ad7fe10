#!/usr/bin/env bash
# Offline checks of the deploy files: terraform fmt, the HCL wiring assertions, checkov, hadolint,
# a shell lint of the scripts, and the dead-letter function under its real framework.
# The function is loaded from its deploy archive's layout (functions/dead_letter/ARCHIVE, which
# terraform/function.tf builds the archive from), not from the checkout.
# Each tool lives in its own cached virtualenv, created on first use like scripts/venv.sh does:
# ${XDG_CACHE_HOME:-$HOME/.cache}/rvc-trainer/<name>-<hash of its requirements file>, from
# requirements-hcl.txt, requirements-checkov.txt and functions/dead_letter/requirements.txt.
# checkov and python-hcl2 both install a package called `hcl2` (incompatible versions), hence apart.
#
# Usage: scripts/infra_checks.sh [all|static|fmt|hcl|checkov|hadolint|shellcheck|function]...
#        scripts/infra_checks.sh venv hcl|checkov    print that environment's path (creating it)
#        scripts/infra_checks.sh hcl-json [DIR]      print DIR/*.tf (default terraform/) parsed, as JSON
# `all` (the default) runs every check; `static` runs all but `hcl`, whose assertions live in
# tests/test_terraform.py and so already run wherever pytest runs the whole suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

tool_venv() {
  local name=$1 req=${2:-$here/requirements-$1.txt} py=${PYTHON:-python3.11}
  [ -f "$req" ] || { echo "no such tool environment: $name" >&2; return 2; }
  command -v "$py" >/dev/null 2>&1 || py=python3
  local hash root venv
  hash=$(sha256sum <"$req" | cut -c1-16)
  root=${RVC_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/rvc-trainer}
  venv="$root/$name-$hash"
  if [ ! -f "$venv/.ready" ]; then
    mkdir -p "$root"
    # A lock per environment: parallel runs wait for one install instead of racing it.
    exec 8>"$root/.lock-$name"
    flock 8
    if [ ! -f "$venv/.ready" ]; then
      rm -rf "$venv"
      echo "setting up $venv (first run only)" >&2
      "$py" -m venv "$venv"
      "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
      touch "$venv/.ready"
    fi
    exec 8>&-
  fi
  echo "$venv"
}

hcl_json() {
  local dir=${1:-$here/terraform} venv
  venv=$(tool_venv hcl)
  "$venv/bin/python" - "$dir" <<'PY'
import json, pathlib, sys

import hcl2

folder = pathlib.Path(sys.argv[1])
parsed = {}
for path in sorted(folder.glob("*.tf")):
    with path.open() as handle:
        parsed[path.name] = hcl2.load(handle)
json.dump(parsed, sys.stdout, indent=1, sort_keys=True)
PY
}

check_fmt() {
  echo "== terraform fmt" >&2
  terraform fmt -check -recursive -diff "$here/terraform"
}

check_hcl() {
  echo "== HCL wiring (tests/test_terraform.py)" >&2
  local main
  main=$(bash "$here/scripts/venv.sh")
  (cd "$here" && "$main/bin/python" -m pytest -q -p no:cacheprovider tests/test_terraform.py)
}

check_checkov() {
  echo "== checkov" >&2
  local venv
  venv=$(tool_venv checkov)
  # --skip-download: no guideline or policy downloads; the built-in checks are all we run.
  (cd "$here" && "$venv/bin/checkov" -d terraform --framework terraform --skip-download --compact --quiet)
}

check_hadolint() {
  echo "== hadolint" >&2
  local venv
  venv=$(tool_venv checkov)
  # Threshold "style": any finding at all fails; accepted ones are ignored inline with a reason.
  "$venv/bin/hadolint" --failure-threshold style "$here/Dockerfile"
}

# The dead-letter function's deploy archive, laid out as terraform/function.tf lays it out from
# functions/dead_letter/ARCHIVE (the one list, read here too): entries under functions/dead_letter/ at
# the root, any other at its repository path, an entry ending in "/" is the *.py files directly in it.
stage_dead_letter() {
  local into=$1
  python3 - "$here" "$into" <<'PY'
import pathlib, shutil, sys

root, into = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
function_dir = "functions/dead_letter/"
for line in (root / function_dir / "ARCHIVE").read_text(encoding="utf-8").splitlines():
    entry = line.strip()
    if not entry or entry.startswith("#"):
        continue
    sources = sorted((root / entry).glob("*.py")) if entry.endswith("/") else [root / entry]
    for source in sources:
        target = into / source.relative_to(root).as_posix().removeprefix(function_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
PY
}

check_function() {
  echo "== dead-letter function (its deploy archive's layout, its pinned requirements, functions-framework)" >&2
  local venv staged
  venv=$(tool_venv function "$here/functions/dead_letter/requirements.txt")
  staged=$(mktemp -d)
  stage_dead_letter "$staged" || { rm -rf "$staged"; return 1; }
  # Loads main.py under the real framework from the archive's layout alone (no checkout on the path:
  # nothing of consumer/ beyond the job protocol, no rvc_core) and posts one unreadable event: the pins
  # install together, every import resolves, `handle` is a CloudEvent function, and an event it
  # cannot read is acked (200), not retried.
  local status=0
  (cd "$staged" && "$venv/bin/python" -I - >/dev/null <<'PY'
import sys

sys.path.insert(0, ".")  # -I dropped the environment's paths; the archive's root is the function's
from functions_framework import create_app

app = create_app(target="handle", source="main.py", signature_type="cloudevent")
headers = {
    "ce-specversion": "1.0",
    "ce-id": "infra-check",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
    "ce-source": "//pubsub.googleapis.com/projects/p/topics/rvc-dead-letter",
}
reply = app.test_client().post("/", headers=headers, json={"subscription": "no message"})
assert reply.status_code == 200, (reply.status_code, reply.get_data(as_text=True))
PY
  ) || status=$?
  rm -rf "$staged"
  return "$status"
}

check_shellcheck() {
  echo "== shellcheck" >&2
  local venv
  venv=$(tool_venv checkov)
  "$venv/bin/shellcheck" "$here/deploy.sh" "$here/scripts/infra_checks.sh"
}

run_checks() {
  local check
  for check in "$@"; do
    case $check in
      all) run_checks fmt hcl checkov hadolint shellcheck function ;;
      static) run_checks fmt checkov hadolint shellcheck function ;;
      fmt | hcl | checkov | hadolint | shellcheck | function) "check_$check" ;;
      *) echo "unknown check: $check (all, static, fmt, hcl, checkov, hadolint, shellcheck, function)" >&2; return 2 ;;
    esac
  done
}

case ${1:-all} in
  venv) tool_venv "${2:?venv needs a name: hcl or checkov}" ;;
  hcl-json) hcl_json "${2:-}" ;;
  *)
    [ $# -gt 0 ] || set -- all
    run_checks "$@"
    echo "infra checks passed: $*" >&2
    ;;
esac
