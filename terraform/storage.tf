# Four buckets, so that nothing the service writes can ever land where uploads trigger jobs:
# inbox (users upload), state (job records, stage outputs, checkpoints), models (results),
# sources (the dead-letter function's source zip).

resource "google_storage_bucket" "inbox" {
  #checkov:skip=CKV_GCP_62:Access logs would go to yet another bucket; Cloud Audit Logs (data access) cover who uploaded what.
  #checkov:skip=CKV_GCP_78:Uploads are inputs deleted after dataset_retention_days; a re-upload is a new generation and a new job, so versions would only keep deleted datasets around.
  name                        = "${local.bucket_prefix}-inbox"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  lifecycle_rule {
    condition {
      age            = var.dataset_retention_days
      matches_prefix = [var.inbox_prefix]
    }
    action {
      type = "Delete"
    }
  }

  # Parts of parallel composite uploads (`gcloud storage cp` of files > 150 MiB) left by failed uploads.
  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["gcloud/tmp/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "state" {
  #checkov:skip=CKV_GCP_62:Access logs would go to yet another bucket; the service logs every job transition itself.
  #checkov:skip=CKV_GCP_78:job.json is rewritten by compare-and-swap many times per job and checkpoints every slice; versions would multiply storage for no recovery value (a lost slice is redone).
  name                        = "${local.bucket_prefix}-state"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  # Finished jobs stop writing, so their records and checkpoints age out; a running job rewrites its
  # record at least every slice, and no job runs for anywhere near state_retention_days (≥ 7).
  lifecycle_rule {
    condition {
      age            = var.state_retention_days
      matches_prefix = ["jobs/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "models" {
  #checkov:skip=CKV_GCP_62:Access logs would go to yet another bucket; Cloud Audit Logs (data access) cover who read a model.
  name                        = "${local.bucket_prefix}-models"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  # <model>/latest.json is overwritten by every new success: keep the previous pointers recoverable.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.model_noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Holds only the function's source zip, written by terraform; access logs add nothing.
  #checkov:skip=CKV_GCP_78:Each source zip is named by its content hash and never overwritten.
  name                        = "${local.bucket_prefix}-sources"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # only build inputs that terraform re-uploads

  depends_on = [google_project_service.apis]
}

# Finalized uploads under inbox_prefix → the intake topic. The prefix leaves out everything else in
# the inbox (gcloud/tmp/ parts of parallel uploads above all); the service writes only to the state
# and models buckets, which have no notification.
resource "google_storage_notification" "intake" {
  count = local.use_notification ? 1 : 0

  bucket             = google_storage_bucket.inbox.name
  payload_format     = "JSON_API_V1"
  topic              = google_pubsub_topic.intake[0].id
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.inbox_prefix

  depends_on = [google_pubsub_topic_iam_member.storage_agent_publishes_intake]
}
