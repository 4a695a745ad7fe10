# Topics: intake (Cloud Storage notifications), results (the CloudEvents users read), dead-letter
# (upload notifications that failed every delivery attempt). Pub/Sub is only where the outside world
# meets us; work slices go through the Cloud Tasks queue (tasks.tf).
#
# The intake push subscription needs the front service's URL, created in the same apply: it
# references local.front_url (a service's `uri`), so Terraform creates the service first.

resource "google_pubsub_topic" "intake" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; messages carry object names and metadata, no customer data, and CMEK would need a KMS key ring this stack does not own.
  count = local.use_notification ? 1 : 0

  name                       = "${var.name_prefix}-intake"
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
  #checkov:skip=CKV_GCP_83:Google-managed encryption; copies of upload notifications only.
  name                       = "${var.name_prefix}-dead-letter"
  project                    = var.project_id
  message_retention_duration = local.push_message_retention

  depends_on = [google_project_service.apis]
}

# --- the push subscription into the front service --------------------------------------------------------
resource "google_pubsub_subscription" "intake" {
  count = local.use_notification ? 1 : 0

  name    = "${var.name_prefix}-intake-push"
  project = var.project_id
  topic   = google_pubsub_topic.intake[0].id

  # Intake answers within seconds; a generous deadline still avoids concurrent duplicates.
  ack_deadline_seconds       = 60
  message_retention_duration = local.push_message_retention

  push_config {
    push_endpoint = "${local.front_url}/events"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.front_url
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

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_dead_letters,
    google_cloud_run_v2_service_iam_member.push_invokes_trainer,
    google_cloud_run_v2_service_iam_member.push_invokes_api,
  ]
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
