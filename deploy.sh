#!/usr/bin/env bash
# Deploys rvc-trainer to Google Cloud: creates the APIs and the Artifact Registry repository, builds
# the service image with Cloud Build, then applies terraform/ with the image's digest.
# See docs/deploy.md. Run `./deploy.sh --help` for the options.
set -euo pipefail
# (Empty arrays are expanded as ${a[@]+"${a[@]}"}: macOS bash 3.2 calls "${a[@]}" unbound under set -u.)

usage() {
  cat <<'EOF'
Usage: ./deploy.sh --project PROJECT_ID [--region REGION] [options] [-- TERRAFORM_ARGS...]

  -p, --project ID      Google Cloud project (default: $PROJECT_ID, else $GOOGLE_CLOUD_PROJECT)
  -r, --region REGION   region with Cloud Run L4 GPUs (default: $REGION, else us-central1)
  -t, --tag TAG         image tag (default: $IMAGE_TAG, else UTC time and git commit)
      --no-bake-assets  build without the weight files (BAKE_ASSETS=0); then pass
                        -- -var rvc_assets=gs://BUCKET/DIR -var rvc_pretrained=gs://BUCKET/DIR
      --skip-build      deploy an image built before (give its tag with --tag)
  -y, --yes             apply without asking for confirmation
  -n, --dry-run         print every command instead of running it
  -h, --help            this help

Everything after `--` goes to both `terraform apply` calls (e.g. -var max_instances=2).
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
project=${PROJECT_ID:-${GOOGLE_CLOUD_PROJECT:-}}
region=${REGION:-us-central1}
tag=${IMAGE_TAG:-}
bake_assets=${BAKE_ASSETS:-1}
repository=${ARTIFACT_REPOSITORY:-rvc-trainer}
dry_run=0
skip_build=0
approve=()
tf_extra=()

while [ $# -gt 0 ]; do
  case $1 in
    -p | --project) project=${2:?--project needs a value}; shift 2 ;;
    -r | --region) region=${2:?--region needs a value}; shift 2 ;;
    -t | --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --no-bake-assets) bake_assets=0; shift ;;
    --skip-build) skip_build=1; shift ;;
    -y | --yes) approve=(-auto-approve); shift ;;
    -n | --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; tf_extra=("$@"); break ;;
    *) echo "deploy.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -z "$project" ]; then
  echo "deploy.sh: no project: pass --project PROJECT_ID or set PROJECT_ID" >&2
  exit 2
fi
if [ -z "$tag" ]; then
  [ "$skip_build" = 0 ] || { echo "deploy.sh: --skip-build needs --tag" >&2; exit 2; }
  commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo local)
  tag="$(date -u +%Y%m%d-%H%M%S)-$commit"
fi

image="$region-docker.pkg.dev/$project/$repository/rvc-trainer:$tag"
tf=(terraform -chdir="$here/terraform")
tf_vars=(-var "project_id=$project" -var "region=$region" -var "artifact_repository=$repository")

# Runs a command, or in a dry run prints it (shell-quoted) without running it.
run() {
  if [ "$dry_run" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if [ "$dry_run" = 0 ]; then
  for tool in gcloud terraform; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deploy.sh: $tool is not installed" >&2; exit 1; }
  done
fi

echo "== 1/4 APIs and the Artifact Registry repository" >&2
run "${tf[@]}" init -input=false
# The image variable is required by the configuration; nothing in this targeted apply uses it.
run "${tf[@]}" apply -input=false ${approve[@]+"${approve[@]}"} \
  -target=google_project_service.apis -target=google_artifact_registry_repository.images \
  "${tf_vars[@]}" -var "image=$image" ${tf_extra[@]+"${tf_extra[@]}"}

echo "== 2/4 the image, built by Cloud Build: $image" >&2
if [ "$skip_build" = 0 ]; then
  # Upload exactly the build context (Dockerfile, requirements, the two packages), not the checkout.
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  cp -R "$here/Dockerfile" "$here/.dockerignore" "$here/requirements.txt" "$here/rvc_core" "$here/consumer" "$context/"
  find "$context" -name __pycache__ -type d -prune -exec rm -rf {} +
  build=(gcloud builds submit "$context" --project "$project" --region "$region"
    --machine-type e2-highcpu-8 --disk-size 200 --timeout 3600s)
  if [ "$bake_assets" = 1 ]; then
    run "${build[@]}" --tag "$image"
  else
    # --tag cannot pass build arguments: the same build as a one-step config.
    cat >"$context/cloudbuild.yaml" <<EOF
steps:
  - name: gcr.io/cloud-builders/docker
    args: [build, --build-arg, BAKE_ASSETS=0, --tag, "$image", .]
images: ["$image"]
EOF
    run "${build[@]}" --config "$context/cloudbuild.yaml"
  fi
fi

echo "== 3/4 the image's digest (Cloud Run deploys exactly these bytes)" >&2
if [ "$dry_run" = 1 ]; then
  run gcloud artifacts docker images describe "$image" --project "$project" --format 'value(image_summary.digest)'
  deployed=$image
else
  digest=$(gcloud artifacts docker images describe "$image" --project "$project" \
    --format 'value(image_summary.digest)')
  deployed="${image%:*}@$digest"
fi

echo "== 4/4 everything else: buckets, topics, the service, the dead-letter function" >&2
run "${tf[@]}" apply -input=false ${approve[@]+"${approve[@]}"} "${tf_vars[@]}" -var "image=$deployed" ${tf_extra[@]+"${tf_extra[@]}"}
run "${tf[@]}" output
