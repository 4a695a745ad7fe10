output "service_url" {
  description = "URL of the front service: POST /train and GET /jobs/<id>, with an identity token (the GPU service with topology \"single\", the CPU service with \"scale-out\")."
  value       = local.front_url
}

output "worker_url" {
  description = "Where the work queue sends slices (WORK_URL): the GPU service's deterministic URL plus /work."
  value       = local.work_url
}

output "work_queue" {
  description = "The Cloud Tasks work queue (TASK_QUEUE); `gcloud tasks list --queue` shows waiting slices."
  value       = google_cloud_tasks_queue.work.id
}

output "topology" {
  description = "Which services take what (see docs/deploy.md)."
  value       = var.topology
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
    results     = google_pubsub_topic.results.name
    dead_letter = google_pubsub_topic.dead_letter.name
  }
}

output "subscriptions" {
  description = "Pub/Sub subscription names (results is the one users pull)."
  value = {
    intake           = local.use_notification ? google_pubsub_subscription.intake[0].name : null
    results          = google_pubsub_subscription.results.name
    dead_letter_hold = google_pubsub_subscription.dead_letter_hold.name
  }
}

output "image_repository" {
  description = "Where deploy.sh pushes the images (worker and api)."
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
