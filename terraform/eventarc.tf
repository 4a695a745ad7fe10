# trigger = "eventarc": an Eventarc Cloud Storage trigger instead of the notification + intake topic,
# delivering to the front service (the GPU service with topology "single", the CPU one with "scale-out").
# Trade-offs (docs/deploy.md): it fires for every finalized object of the inbox bucket (no prefix
# filter; the service ignores objects outside INBOX_PREFIX with a 2xx), and its managed subscription
# has a 10 s ack deadline that Terraform cannot change (intake answers well within it).

resource "google_eventarc_trigger" "intake" {
  count = local.use_eventarc ? 1 : 0

  name     = "${var.name_prefix}-intake"
  project  = var.project_id
  location = var.region # must be the inbox bucket's location

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }
  matching_criteria {
    attribute = "bucket"
    value     = google_storage_bucket.inbox.name
  }

  destination {
    cloud_run_service {
      service = local.front_service_name
      region  = var.region
      path    = "/events"
    }
  }

  service_account = google_service_account.eventarc[0].email

  depends_on = [
    google_project_iam_member.eventarc_receives_events,
    google_project_iam_member.storage_agent_publishes_events,
    google_cloud_run_v2_service_iam_member.eventarc_invokes_trainer,
    google_cloud_run_v2_service_iam_member.eventarc_invokes_api,
  ]
}
