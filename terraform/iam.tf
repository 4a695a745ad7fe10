# Identities and least-privilege grants. Every grant is additive (*_iam_member) and scoped to one
# bucket, topic, subscription or service wherever the role allows it; nothing is public.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-trainer"
  display_name = "rvc-trainer service (Cloud Run runtime)"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "api" {
  count = local.scale_out_topology ? 1 : 0

  project      = var.project_id
  account_id   = "${var.name_prefix}-api"
  display_name = "rvc-trainer CPU front (Cloud Run runtime, topology scale-out)"

  depends_on = [google_project_service.apis]
}

# The identity of every work task's OIDC token: the only account the GPU worker accepts /work from.
resource "google_service_account" "tasks" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-tasks"
  display_name = "rvc-trainer work queue identity (may only invoke the GPU service)"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-push"
  display_name = "rvc-trainer Pub/Sub push identity (may only invoke the service)"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "eventarc" {
  count = local.use_eventarc ? 1 : 0

  project      = var.project_id
  account_id   = "${var.name_prefix}-eventarc"
  display_name = "rvc-trainer Eventarc trigger identity"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "dead_letter" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-dead-letter"
  display_name = "rvc-trainer dead-letter function"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "builder" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-builder"
  display_name = "rvc-trainer build identity (the images and the dead-letter function)"

  depends_on = [google_project_service.apis]
}

# --- the service's runtime account -------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "runtime_reads_inbox" {
  bucket = google_storage_bucket.inbox.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "runtime_owns_state" {
  bucket = google_storage_bucket.state.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "runtime_writes_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectAdmin" # overwrites <model>/latest.json
  member = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "runtime_reads_assets" {
  for_each = local.asset_buckets

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = google_service_account.runtime.member
}

resource "google_pubsub_topic_iam_member" "runtime_publishes_results" {
  topic  = google_pubsub_topic.results.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.runtime.member
}

# The GPU service creates each job's next task, with the tasks account's OIDC token on it.
resource "google_cloud_tasks_queue_iam_member" "runtime_enqueues_work" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.work.name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.runtime.member
}

# Creating a task that carries another account's OIDC token needs iam.serviceAccounts.actAs on it.
resource "google_service_account_iam_member" "runtime_acts_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime.member
}

# --- the CPU front's runtime account (scale-out) ----------------------------------------------------------
# Intake reads the upload, writes the job record, publishes `accepted` and creates task #0; status reads
# job records; the job and model pages read (and serve) finished models. It never writes models.
resource "google_storage_bucket_iam_member" "api_reads_inbox" {
  count = local.scale_out_topology ? 1 : 0

  bucket = google_storage_bucket.inbox.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.api[0].member
}

resource "google_storage_bucket_iam_member" "api_owns_state" {
  count = local.scale_out_topology ? 1 : 0

  bucket = google_storage_bucket.state.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.api[0].member
}

resource "google_storage_bucket_iam_member" "api_reads_models" {
  count = local.scale_out_topology ? 1 : 0

  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.api[0].member
}

resource "google_pubsub_topic_iam_member" "api_publishes_results" {
  count = local.scale_out_topology ? 1 : 0

  topic  = google_pubsub_topic.results.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.api[0].member
}

resource "google_cloud_tasks_queue_iam_member" "api_enqueues_work" {
  count = local.scale_out_topology ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.work.name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.api[0].member
}

resource "google_service_account_iam_member" "api_acts_as_tasks" {
  count = local.scale_out_topology ? 1 : 0

  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.api[0].member
}

# --- who may call the services ----------------------------------------------------------------------------
# The work queue calls the GPU service's POST /work. With topology = "scale-out" this is the GPU
# service's only invoker: uploads, /train and status go to the CPU front.
resource "google_cloud_run_v2_service_iam_member" "tasks_invoke_trainer" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.trainer.name
  role     = "roles/run.invoker"
  member   = google_service_account.tasks.member
}

# The upload push goes to the front: the GPU service itself (single) or the CPU service (scale-out).
resource "google_cloud_run_v2_service_iam_member" "push_invokes_trainer" {
  count = local.single_topology ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.trainer.name
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

resource "google_cloud_run_v2_service_iam_member" "push_invokes_api" {
  count = local.scale_out_topology ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api[0].name
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

resource "google_cloud_run_v2_service_iam_member" "eventarc_invokes_trainer" {
  count = local.use_eventarc && local.single_topology ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.trainer.name
  role     = "roles/run.invoker"
  member   = google_service_account.eventarc[0].member
}

resource "google_cloud_run_v2_service_iam_member" "eventarc_invokes_api" {
  count = local.use_eventarc && local.scale_out_topology ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api[0].name
  role     = "roles/run.invoker"
  member   = google_service_account.eventarc[0].member
}

# Eventarc delivers direct Cloud Storage events only for identities holding this project-level role.
resource "google_project_iam_member" "eventarc_receives_events" {
  count = local.use_eventarc ? 1 : 0

  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.eventarc[0].member
}

# --- Google's service agents -----------------------------------------------------------------------------
# Pub/Sub moves undeliverable upload notifications to the dead-letter topic only with publisher there
# and subscriber on the intake subscription.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letters" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_intake" {
  count = local.use_notification ? 1 : 0

  subscription = google_pubsub_subscription.intake[0].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# Pub/Sub signs the push OIDC tokens as these accounts; projects created before 2021-04-08 need the
# grant explicitly, later ones have it implicitly (granting it is harmless there).
resource "google_service_account_iam_member" "pubsub_agent_signs_as_push" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_service_account_iam_member" "pubsub_agent_signs_as_eventarc" {
  count = local.use_eventarc ? 1 : 0

  service_account_id = google_service_account.eventarc[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Cloud Storage publishes the inbox notifications as its service agent.
resource "google_pubsub_topic_iam_member" "storage_agent_publishes_intake" {
  count = local.use_notification ? 1 : 0

  topic  = google_pubsub_topic.intake[0].id
  role   = "roles/pubsub.publisher"
  member = local.storage_service_agent
}

# Eventarc's Cloud Storage triggers publish through Pub/Sub topics Eventarc creates itself, so the
# agent needs publisher on the project (documented requirement of Cloud Storage triggers).
resource "google_project_iam_member" "storage_agent_publishes_events" {
  count = local.use_eventarc ? 1 : 0

  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = local.storage_service_agent
}

# --- the dead-letter function --------------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "dead_letter_updates_state" {
  bucket = google_storage_bucket.state.name
  role   = "roles/storage.objectUser" # read and compare-and-swap job.json
  member = google_service_account.dead_letter.member
}

resource "google_pubsub_topic_iam_member" "dead_letter_publishes_results" {
  topic  = google_pubsub_topic.results.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.dead_letter.member
}

# The function's Eventarc trigger calls it as the same account.
resource "google_cloud_run_v2_service_iam_member" "dead_letter_invokes_function" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.dead_letter.name
  role     = "roles/run.invoker"
  member   = google_service_account.dead_letter.member
}

# --- building: the images (deploy.sh's Cloud Build) and the dead-letter function -------------------------
# A dedicated build identity: new projects no longer give the default compute account these roles.
# roles/run.builder is what Cloud Run documents for function builds: log writing, Artifact Registry
# pushes (Cloud Functions creates its gcf-artifacts repository during the build, so no repository
# scope exists beforehand) and reading the uploaded source, which Cloud Functions stages in a
# gcf-v2-sources-* bucket it creates itself (deploy.sh's build source goes to PROJECT_cloudbuild).
resource "google_project_iam_member" "builder_builds" {
  project = var.project_id
  role    = "roles/run.builder"
  member  = google_service_account.builder.member
}

# IAM grants take up to a few minutes to apply everywhere; a build started at once fails with a
# permission error on the source or the push. Wait before anything builds as this account.
resource "time_sleep" "builder_grants_settle" {
  create_duration = "90s"

  triggers = {
    builder = google_service_account.builder.email
    grant   = google_project_iam_member.builder_builds.id
  }
}
