# The dead-letter function (Cloud Functions gen2, CPU): every message that exhausted its delivery
# attempts on the intake or work subscription becomes one `failed` result, unless its job already
# has a final one (functions/dead_letter/main.py).

data "archive_file" "dead_letter" {
  type        = "zip"
  source_dir  = "${path.module}/../functions/dead_letter"
  output_path = "${path.module}/.terraform/build/dead_letter.zip"
  excludes    = ["__pycache__"]
}

resource "google_storage_bucket_object" "dead_letter_source" {
  # Named by content: a changed function is a new object, which makes the function rebuild.
  name         = "functions/dead_letter-${data.archive_file.dead_letter.output_sha256}.zip"
  bucket       = google_storage_bucket.sources.name
  source       = data.archive_file.dead_letter.output_path
  content_type = "application/zip"
}

resource "google_cloudfunctions2_function" "dead_letter" {
  name        = "${var.name_prefix}-dead-letter"
  project     = var.project_id
  location    = var.region
  description = "Reports dead-lettered intake and work messages as failed jobs"

  build_config {
    runtime         = "python311"
    entry_point     = "handle"
    service_account = google_service_account.builder.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.dead_letter_source.name
      }
    }
  }

  service_config {
    available_memory               = "256M"
    available_cpu                  = "1"
    timeout_seconds                = 120
    max_instance_count             = 2
    min_instance_count             = 0
    service_account_email          = google_service_account.dead_letter.email
    ingress_settings               = "ALLOW_INTERNAL_ONLY" # only its Eventarc trigger calls it
    all_traffic_on_latest_revision = true
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      STATE_BUCKET         = "gs://${google_storage_bucket.state.name}"
      RESULTS_TOPIC        = google_pubsub_topic.results.name
      INBOX_PREFIX         = var.inbox_prefix
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.dead_letter.id
    retry_policy          = "RETRY_POLICY_RETRY" # a job still leased by a live slice is retried later
    service_account_email = google_service_account.dead_letter.email
  }

  depends_on = [
    google_project_iam_member.builder_writes_logs,
    google_project_iam_member.builder_pushes_images,
    google_storage_bucket_iam_member.builder_reads_sources,
    google_storage_bucket_iam_member.dead_letter_updates_state,
    google_pubsub_topic_iam_member.dead_letter_publishes_results,
  ]
}
