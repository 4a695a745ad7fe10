#!/usr/bin/env bash
# One-time machine set-up for `make demo` / `make test`; fast when everything is already there.
# Installs the system tools the pipeline and tests use, then prints the ready virtualenv's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
# Headless Chromium drives the job page's browser tests (tests/test_job_page.py).
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}" >&2
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >&2
fi
if command -v gcloud >/dev/null 2>&1 && ! gcloud beta emulators pubsub --help >/dev/null 2>&1; then
  echo "installing the Pub/Sub emulator (google-cloud-cli-pubsub-emulator)" >&2
  DEBIAN_FRONTEND=noninteractive ${sudo_cmd:-} apt-get install -y -qq google-cloud-cli-pubsub-emulator >&2 || \
    echo "warning: could not install the Pub/Sub emulator; emulator tests will fail" >&2
fi
bash "$here/venv.sh"
