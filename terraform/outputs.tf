output "service_url" {
  description = "URL of the Cloud Run service (POST /train and GET /jobs/<id> take an identity token)."
  value       = google_cloud_run_v2_service.trainer.uri
}

output "inbox_bucket" {
  description = "Upload dataset zips here, under inbox_prefix."
  value       = google_storage_bucket.inbox.name
}

output "state_bucket" {
  description = "Job records (jobs/<job_id>/job.json), stage outputs and checkpoints."
  value       = google_storage_bucket.state.name
}

output "models_bucket" {
  description = "Trained models: <model>/<job_id>/… and <model>/latest.json."
  value       = google_storage_bucket.models.name
}

output "topics" {
  description = "Pub/Sub topic names."
  value = {
    intake      = local.use_notification ? google_pubsub_topic.intake[0].name : null
    work        = google_pubsub_topic.work.name
    results     = google_pubsub_topic.results.name
    dead_letter = google_pubsub_topic.dead_letter.name
  }
}

output "subscriptions" {
  description = "Pub/Sub subscription names (results is the one users pull)."
  value = {
    intake           = local.use_notification ? google_pubsub_subscription.intake[0].name : null
    work             = google_pubsub_subscription.work.name
    results          = google_pubsub_subscription.results.name
    dead_letter_hold = google_pubsub_subscription.dead_letter_hold.name
  }
}

output "image_repository" {
  description = "Where deploy.sh pushes the service image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "upload_command" {
  description = "Start a training job (edit the model name, epochs and file)."
  value       = "gsutil -h \"x-goog-meta-model-name:alice\" -h \"x-goog-meta-epochs:200\" cp voice.zip gs://${google_storage_bucket.inbox.name}/${var.inbox_prefix}"
}

output "upload_command_gcloud" {
  description = "The same upload with gcloud storage."
  value       = "gcloud storage cp --custom-metadata=model-name=alice,epochs=200 voice.zip gs://${google_storage_bucket.inbox.name}/${var.inbox_prefix}"
}

output "pull_command" {
  description = "Read the results (accepted, progress, succeeded, failed)."
  value       = "gcloud pubsub subscriptions pull ${google_pubsub_subscription.results.name} --project ${var.project_id} --auto-ack --limit 10"
}
