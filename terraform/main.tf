# rvc-trainer on Google Cloud: an upload to the inbox bucket → a GPU Cloud Run service that trains in
# slices driven by Pub/Sub → models in the models bucket and CloudEvents on the results topic.
# See shared/ARCHITECTURE.md for the design and docs/deploy.md for how to run this.

locals {
  bucket_prefix    = coalesce(var.bucket_name_prefix, "${var.project_id}-${var.name_prefix}")
  use_notification = var.trigger == "notification"
  use_eventarc     = var.trigger == "eventarc"

  labels = merge({ app = "rvc-trainer" }, var.labels)

  # Service agents Google creates when the APIs are enabled.
  pubsub_service_agent  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  storage_service_agent = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"

  # Pub/Sub retries a failed push with exponential backoff between these bounds.
  retry_minimum_backoff = "10s"
  retry_maximum_backoff = "600s"
  # A week: an outage of the service or a GPU quota shortage loses no upload and no job.
  push_message_retention = "604800s"

  # A bucket named in RVC_ASSETS / RVC_PRETRAINED (images built with BAKE_ASSETS=0) must be readable.
  asset_buckets = toset([
    for uri in [var.rvc_assets, var.rvc_pretrained] : split("/", trimprefix(uri, "gs://"))[0]
    if startswith(uri, "gs://")
  ])

  # Every setting of the service (consumer/settings.py reads these).
  service_env = {
    GOOGLE_CLOUD_PROJECT     = var.project_id
    INBOX_BUCKET             = google_storage_bucket.inbox.name
    INBOX_PREFIX             = var.inbox_prefix
    STATE_BUCKET             = "gs://${google_storage_bucket.state.name}"
    MODELS_BUCKET            = "gs://${google_storage_bucket.models.name}"
    WORK_TOPIC               = google_pubsub_topic.work.name
    RESULTS_TOPIC            = google_pubsub_topic.results.name
    SLICE_SECONDS            = tostring(var.slice_seconds)
    MAX_CONSECUTIVE_FAILURES = tostring(var.max_consecutive_failures)
    TRAIN_PRESET             = var.train_preset
    RVC_ASSETS               = var.rvc_assets
    RVC_PRETRAINED           = var.rvc_pretrained
    MESSAGING                = "pubsub"
    DEVICE                   = "cuda"
  }
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
