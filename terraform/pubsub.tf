# Topics: intake (Cloud Storage notifications), work (one token per training slice), results (the
# CloudEvents users read), dead-letter (messages that failed every delivery attempt).
#
# The push subscriptions need the service URL and the service is created in the same apply: they
# reference google_cloud_run_v2_service.trainer.uri, so Terraform creates the service first.

resource "google_pubsub_topic" "intake" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; messages carry object names and metadata, no customer data, and CMEK would need a KMS key ring this stack does not own.
  count = local.use_notification ? 1 : 0

  name                       = "${var.name_prefix}-intake"
  project                    = var.project_id
  message_retention_duration = local.push_message_retention

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "work" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; work tokens are {job_id, seq} only.
  name                       = "${var.name_prefix}-work"
  project                    = var.project_id
  message_retention_duration = local.push_message_retention

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "results" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; results carry model names, metrics and gs:// URIs, readable only through IAM.
  name    = "${var.name_prefix}-results"
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; copies of intake and work messages only.
  name                       = "${var.name_prefix}-dead-letter"
  project                    = var.project_id
  message_retention_duration = local.push_message_retention

  depends_on = [google_project_service.apis]
}

# --- push subscriptions into the service -----------------------------------------------------------
resource "google_pubsub_subscription" "intake" {
  count = local.use_notification ? 1 : 0

  name    = "${var.name_prefix}-intake-push"
  project = var.project_id
  topic   = google_pubsub_topic.intake[0].id

  # Intake answers within seconds; a generous deadline still avoids concurrent duplicates.
  ack_deadline_seconds       = 60
  message_retention_duration = local.push_message_retention

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.trainer.uri}/events"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloud_run_v2_service.trainer.uri
    }
  }

  retry_policy {
    minimum_backoff = local.retry_minimum_backoff
    maximum_backoff = local.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires, however long no upload arrives
  }

  depends_on = [google_pubsub_topic_iam_member.pubsub_agent_dead_letters]
}

resource "google_pubsub_subscription" "work" {
  name    = "${var.name_prefix}-work-push"
  project = var.project_id
  topic   = google_pubsub_topic.work.id

  # The longest a push may take: a slice (slice_seconds) plus start-up, checkpoint and upload.
  ack_deadline_seconds       = 600
  message_retention_duration = local.push_message_retention

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.trainer.uri}/work"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloud_run_v2_service.trainer.uri
    }
  }

  retry_policy {
    minimum_backoff = local.retry_minimum_backoff
    maximum_backoff = local.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic_iam_member.pubsub_agent_dead_letters]
}

# --- pull subscriptions -----------------------------------------------------------------------------
resource "google_pubsub_subscription" "results" {
  name                       = var.results_subscription
  project                    = var.project_id
  topic                      = google_pubsub_topic.results.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.push_message_retention

  expiration_policy {
    ttl = ""
  }
}

# Keeps every dead-lettered message for inspection (the function reads its own Eventarc copy).
resource "google_pubsub_subscription" "dead_letter_hold" {
  name                       = "${var.name_prefix}-dead-letter-hold"
  project                    = var.project_id
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.push_message_retention

  expiration_policy {
    ttl = ""
  }
}
