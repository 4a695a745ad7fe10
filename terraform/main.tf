# rvc-trainer on Google Cloud: an upload to the inbox bucket → the front service (intake) → work slices
# through a Cloud Tasks queue → a GPU Cloud Run service → models in the models bucket and CloudEvents
# on the results topic. See shared/ARCHITECTURE.md for the design and docs/deploy.md for how to run this.

locals {
  bucket_prefix    = coalesce(var.bucket_name_prefix, "${var.project_id}-${var.name_prefix}")
  use_notification = var.trigger == "notification"
  use_eventarc     = var.trigger == "eventarc"

  # topology = "single": the GPU service (role all) is also the front. "scale-out": a CPU service
  # (role api) is the front and the GPU service (role worker) takes only work slices.
  single_topology    = var.topology == "single"
  scale_out_topology = var.topology == "scale-out"
  gpu_service_role   = local.single_topology ? "all" : "worker"

  # The front takes the upload push, POST /train and GET /jobs/<id>.
  front_service_name = local.scale_out_topology ? google_cloud_run_v2_service.api[0].name : google_cloud_run_v2_service.trainer.name
  front_url          = local.scale_out_topology ? google_cloud_run_v2_service.api[0].uri : google_cloud_run_v2_service.trainer.uri

  # The GPU service's deterministic URL. The GPU service itself creates the next task, so its
  # WORK_URL cannot come from its own `uri` attribute (a cycle); Cloud Run assigns this URL whenever
  # "<name>-<project number>" fits a 63-character DNS label (service_name is at most 45 characters).
  worker_origin = "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"
  work_url      = "${local.worker_origin}/work"

  labels = merge({ app = "rvc-trainer" }, var.labels)

  # Service agents Google creates when the APIs are enabled.
  pubsub_service_agent  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  storage_service_agent = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"

  # Pub/Sub retries a failed intake push with exponential backoff between these bounds.
  retry_minimum_backoff = "10s"
  retry_maximum_backoff = "600s"
  # A week: an outage of the service loses no upload.
  push_message_retention = "604800s"

  # A bucket named in RVC_ASSETS / RVC_PRETRAINED (images built with BAKE_ASSETS=0) must be readable.
  asset_buckets = toset([
    for uri in [var.rvc_assets, var.rvc_pretrained] : split("/", trimprefix(uri, "gs://"))[0]
    if startswith(uri, "gs://")
  ])

  # The identity whose OIDC token /events accepts: Pub/Sub's push account, or the Eventarc trigger's.
  push_identity_email = local.use_eventarc ? google_service_account.eventarc[0].email : google_service_account.push.email

  # Every setting both roles read (consumer/settings.py); SERVICE_ROLE and DEVICE are per service.
  common_env = {
    GOOGLE_CLOUD_PROJECT      = var.project_id
    INBOX_BUCKET              = google_storage_bucket.inbox.name
    INBOX_PREFIX              = var.inbox_prefix
    STATE_BUCKET              = "gs://${google_storage_bucket.state.name}"
    MODELS_BUCKET             = "gs://${google_storage_bucket.models.name}"
    RESULTS_TOPIC             = google_pubsub_topic.results.name
    TASK_QUEUE                = google_cloud_tasks_queue.work.id # projects/P/locations/L/queues/Q
    WORK_URL                  = local.work_url
    TASKS_SERVICE_ACCOUNT     = google_service_account.tasks.email
    DISPATCH_DEADLINE_SECONDS = tostring(var.dispatch_deadline_seconds)
    WORKER_SLOTS              = tostring(var.max_instances) # = the queue's max_concurrent_dispatches
    MAX_CONSECUTIVE_FAILURES  = tostring(var.max_consecutive_failures)
    TRAIN_PRESET              = var.train_preset
    RVC_ASSETS                = var.rvc_assets
    RVC_PRETRAINED            = var.rvc_pretrained
    PUSH_SERVICE_ACCOUNT      = local.push_identity_email
    REQUIRE_PUSH_IDENTITY     = "true"
    MESSAGING                 = "pubsub"
  }
  gpu_service_env = merge(local.common_env, { SERVICE_ROLE = local.gpu_service_role, DEVICE = "cuda" })
  api_service_env = merge(local.common_env, { SERVICE_ROLE = "api", DEVICE = "cpu" })
}

data "google_project" "this" {
  project_id = var.project_id
}

# Reading it makes Google create the Cloud Storage service agent if it does not exist yet.
data "google_storage_project_service_account" "this" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com", # project-level IAM grants and the project number
    "cloudtasks.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other things in the project may use these APIs: never switch them off on destroy.
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption; the image holds public code and public model weights only, and CMEK would need a KMS key ring this stack does not own.
  project       = var.project_id
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "rvc-trainer service images (built by deploy.sh with Cloud Build)"

  docker_config {
    # deploy.sh tags every build uniquely and deploys by digest: a tag never moves.
    immutable_tags = true
  }

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s" # 30 days; the five newest are kept above
    }
  }

  depends_on = [google_project_service.apis]
}
