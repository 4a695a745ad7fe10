# The dead-letter function (Cloud Functions gen2, CPU): every upload notification that exhausted its
# delivery attempts on the intake subscription becomes one `failed` result, unless its job already has
# a final one (functions/dead_letter/main.py). Work slices are never dead-lettered: the work queue
# retries them without limit and the app fails a job after MAX_CONSECUTIVE_FAILURES slices.

# The deploy archive: exactly the files functions/dead_letter/ARCHIVE lists (the one list; the test
# tests/test_job_protocol.py and scripts/infra_checks.sh `function` stage and import the function from
# the same set). Its paths are relative to the repository root: those under functions/dead_letter/ land
# at the archive's root, every other one at the same path as in this repository, so that
# `import consumer.jobs…` works there as in the services (one implementation, not a copy). An entry
# ending in "/" is a package: the *.py files directly inside it. `#` comments and blank lines are skipped.
locals {
  repository_root = "${path.module}/.."
  dead_letter_dir = "${local.repository_root}/functions/dead_letter"

  dead_letter_archive_entries = [
    for line in split("\n", file("${local.dead_letter_dir}/ARCHIVE")) : trimspace(line)
    if trimspace(line) != "" && !startswith(trimspace(line), "#")
  ]

  # Path in the archive → file on this machine.
  dead_letter_archive_files = merge(
    {
      for entry in local.dead_letter_archive_entries :
      trimprefix(entry, "functions/dead_letter/") => "${local.repository_root}/${entry}"
      if !endswith(entry, "/")
    },
    merge([
      for entry in local.dead_letter_archive_entries : {
        for file in fileset("${local.repository_root}/${entry}", "*.py") :
        trimprefix("${entry}${file}", "functions/dead_letter/") => "${local.repository_root}/${entry}${file}"
      }
      if endswith(entry, "/")
    ]...),
  )
}

# One `source` block per file (archive_file takes several `source` blocks, each a text file's content
# and its path in the zip), so no staging folder is needed and the zip changes only with its files.
data "archive_file" "dead_letter" {
  type        = "zip"
  output_path = "${path.module}/.terraform/build/dead_letter.zip"

  dynamic "source" {
    for_each = local.dead_letter_archive_files
    content {
      filename = source.key
      content  = file(source.value)
    }
  }
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
  description = "Reports dead-lettered upload notifications as failed jobs"

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
    time_sleep.builder_grants_settle, # the build reads gcf-v2-sources-* as the builder account
    google_storage_bucket_iam_member.dead_letter_updates_state,
    google_pubsub_topic_iam_member.dead_letter_publishes_results,
  ]
}
