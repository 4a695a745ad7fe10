#!/usr/bin/env bash
# Prints the path of a ready virtual environment for this checkout, creating it when needed.
# The environment lives outside the clone, keyed by the requirements' hash, so CI runs and
# re-runs reuse one ~7 GB torch install instead of reinstalling it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
hash=$(cat "$here/requirements.txt" "$here/requirements-dev.txt" "$here/scripts/venv.sh" | sha256sum | cut -c1-16)
root=${RVC_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/rvc-trainer}
venv="$root/venv-$hash"
# This checkout's own package (console script `rvc-trainer`), editable and without dependencies:
# per checkout, so it is checked on every call and not part of the environment's key.
project="$here $(sha256sum <"$here/pyproject.toml" | cut -c1-16)"
if [ -f "$venv/.ready" ] && [ "$(cat "$venv/.project" 2>/dev/null)" = "$project" ]; then
  echo "$venv"
  exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [ ! -f "$venv/.ready" ]; then
  rm -rf "$venv"
  echo "setting up $venv (first run only; the torch stack is several GB)" >&2
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip >&2
  "${pip[@]}" install -r "$here/requirements.txt" -r "$here/requirements-dev.txt" >&2
  # pyworld (harvest pitch) ships no wheel: build it against the pinned numpy, with setuptools<81.
  "${pip[@]}" install -q "setuptools<81" wheel "cython<4" >&2
  "${pip[@]}" install --no-build-isolation pyworld==0.3.5 >&2
  touch "$venv/.ready"
fi
if [ "$(cat "$venv/.project" 2>/dev/null)" != "$project" ]; then
  "$venv/bin/python" -m pip --disable-pip-version-check install -q --no-deps --no-build-isolation \
    -e "$here" >&2
  echo "$project" >"$venv/.project"
fi
echo "$venv"
