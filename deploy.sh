#!/usr/bin/env bash
# Deploys rvc-trainer to Google Cloud: creates the APIs, the Artifact Registry repository and the build
# account, builds the images the topology needs with Cloud Build (the GPU `worker` image; with
# --topology scale-out also the CPU `api` image), then applies terraform/ with the images' digests.
# See docs/deploy.md. Run `./deploy.sh --help` for the options.
set -euo pipefail
# (Empty arrays are expanded as ${a[@]+"${a[@]}"}: macOS bash 3.2 calls "${a[@]}" unbound under set -u.)

usage() {
  cat <<'EOF'
Usage: ./deploy.sh --project PROJECT_ID [--region REGION] [options] [-- TERRAFORM_ARGS...]

  -p, --project ID      Google Cloud project (default: $PROJECT_ID, else $GOOGLE_CLOUD_PROJECT)
  -r, --region REGION   region with Cloud Run L4 GPUs (default: $REGION, else us-central1)
      --topology T      single (default; $TOPOLOGY): one GPU service takes everything;
                        scale-out: a CPU front (no torch) takes uploads and status, the GPU
                        service only work slices. Builds both images then.
      --build-region R  region where Cloud Build runs (default: $BUILD_REGION, else us-central1;
                        Cloud Build refuses builds in some GPU regions). Images still go to
                        REGION's Artifact Registry.
      --name-prefix P   terraform's name_prefix (default: $NAME_PREFIX, else rvc); names the build
                        account P-builder
  -t, --tag TAG         image tag (default: $IMAGE_TAG, else UTC time and git commit)
      --no-bake-assets  build without the weight files (BAKE_ASSETS=0); then pass
                        -- -var rvc_assets=gs://BUCKET/DIR -var rvc_pretrained=gs://BUCKET/DIR
      --skip-build      deploy images built before (give their tag with --tag)
  -y, --yes             apply without asking for confirmation
  -n, --dry-run         print every command (and the build config) instead of running it
  -h, --help            this help

Everything after `--` goes to both `terraform apply` calls (e.g. -var max_instances=2).
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
project=${PROJECT_ID:-${GOOGLE_CLOUD_PROJECT:-}}
region=${REGION:-us-central1}
build_region=${BUILD_REGION:-us-central1}
topology=${TOPOLOGY:-single}
name_prefix=${NAME_PREFIX:-rvc}
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
    --topology) topology=${2:?--topology needs a value}; shift 2 ;;
    --build-region) build_region=${2:?--build-region needs a value}; shift 2 ;;
    --name-prefix) name_prefix=${2:?--name-prefix needs a value}; shift 2 ;;
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
case $topology in
  single) targets=(worker) ;;
  scale-out) targets=(worker api) ;;
  *) echo "deploy.sh: --topology must be single or scale-out, not $topology" >&2; exit 2 ;;
esac
if [ -z "$tag" ]; then
  [ "$skip_build" = 0 ] || { echo "deploy.sh: --skip-build needs --tag" >&2; exit 2; }
  commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo local)
  tag="$(date -u +%Y%m%d-%H%M%S)-$commit"
fi

registry="$region-docker.pkg.dev/$project/$repository"
builder="$name_prefix-builder@$project.iam.gserviceaccount.com"
tf=(terraform -chdir="$here/terraform")
tf_vars=(-var "project_id=$project" -var "region=$region" -var "artifact_repository=$repository"
  -var "topology=$topology" -var "name_prefix=$name_prefix")

# Image reference of a Dockerfile target: one package per target in the repository.
image_of() { echo "$registry/$1:$tag"; }

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

echo "== 1/4 APIs, the Artifact Registry repository and the build account" >&2
run "${tf[@]}" init -input=false
# The image variables are required by the configuration; nothing in this targeted apply uses them.
run "${tf[@]}" apply -input=false ${approve[@]+"${approve[@]}"} \
  -target=google_project_service.apis -target=google_artifact_registry_repository.images \
  -target=time_sleep.builder_grants_settle \
  "${tf_vars[@]}" -var "worker_image=$(image_of worker)" -var "api_image=$(image_of api)" \
  ${tf_extra[@]+"${tf_extra[@]}"}

echo "== 2/4 the images (${targets[*]}), built by Cloud Build in $build_region" >&2
if [ "$skip_build" = 0 ]; then
  # Upload exactly the build context (Dockerfile, requirements, the two packages), not the checkout.
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  cp -R "$here/Dockerfile" "$here/.dockerignore" "$here/requirements.txt" "$here/requirements-api.txt" \
    "$here/rvc_core" "$here/consumer" "$context/"
  find "$context" -name __pycache__ -type d -prune -exec rm -rf {} +
  # One build, one step per target. It runs as the build account Terraform created (the default
  # Cloud Build account of new projects has no roles), which requires Cloud Logging-only logs.
  {
    echo "steps:"
    for target in "${targets[@]}"; do
      build_args=""
      [ "$target" != worker ] || build_args=" --build-arg, BAKE_ASSETS=$bake_assets,"
      echo "  - id: $target"
      echo "    name: gcr.io/cloud-builders/docker"
      echo "    env: [DOCKER_BUILDKIT=1]"
      echo "    args: [build, --target, $target,$build_args --tag, \"$(image_of "$target")\", .]"
      echo "    waitFor: ['-'] # the targets share no stage: both build at once"
    done
    echo "images:"
    for target in "${targets[@]}"; do
      echo "  - \"$(image_of "$target")\""
    done
    echo "serviceAccount: projects/$project/serviceAccounts/$builder"
    echo "timeout: 3600s"
    echo "options:"
    echo "  logging: CLOUD_LOGGING_ONLY"
    echo "  machineType: E2_HIGHCPU_8"
    echo "  diskSizeGb: 200"
  } >"$context/cloudbuild.yaml"
  [ "$dry_run" = 0 ] || sed 's/^/  | /' "$context/cloudbuild.yaml"
  run gcloud builds submit "$context" --project "$project" --region "$build_region" \
    --config "$context/cloudbuild.yaml"
fi

echo "== 3/4 the images' digests (Cloud Run deploys exactly these bytes)" >&2
image_vars=()
for target in "${targets[@]}"; do
  image=$(image_of "$target")
  if [ "$dry_run" = 1 ]; then
    run gcloud artifacts docker images describe "$image" --project "$project" --format 'value(image_summary.digest)'
    deployed=$image
  else
    digest=$(gcloud artifacts docker images describe "$image" --project "$project" \
      --format 'value(image_summary.digest)')
    deployed="${image%:*}@$digest"
  fi
  image_vars+=(-var "${target}_image=$deployed")
done

echo "== 4/4 everything else: buckets, topics, the work queue, the services, the dead-letter function" >&2
run "${tf[@]}" apply -input=false ${approve[@]+"${approve[@]}"} "${tf_vars[@]}" "${image_vars[@]}" \
  ${tf_extra[@]+"${tf_extra[@]}"}
run "${tf[@]}" output
