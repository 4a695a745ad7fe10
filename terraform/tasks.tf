# The work queue. Each task is one training slice {job_id, seq}, named "<job_id>-<seq>" by the app
# so it is created once; its HTTP target is the GPU service's POST /work (WORK_URL) with an OIDC token
# of the tasks account, and its dispatch deadline (DISPATCH_DEADLINE_SECONDS) is set per task by the
# app. Waiting here is not failing: a task waits for a free GPU without using up any attempt limit.

resource "google_cloud_tasks_queue" "work" {
  name     = "${var.name_prefix}-work"
  project  = var.project_id
  location = var.region

  rate_limits {
    # One slice per GPU instance: the queue never dispatches more slices than there are GPUs, so a
    # dispatched slice finds a GPU (the same variable caps the GPU service's instances).
    max_concurrent_dispatches = var.max_instances
    max_dispatches_per_second = 10
  }

  retry_config {
    # Unlimited attempts and no max_retry_duration: a slice answered "retry later" (its GPU is busy,
    # its job leased elsewhere) or cut short by a deploy is retried until it runs; a job that really
    # keeps failing is failed by the app after MAX_CONSECUTIVE_FAILURES slices, not by the queue.
    max_attempts  = -1
    min_backoff   = "10s"
    max_backoff   = "300s" # a waiting slice is retried at least every 5 minutes
    max_doublings = 4      # waits of 10, 20, 40, 80, 160 s, then 300 s each
  }

  # One log entry per dispatch attempt: a slice's history (retries, answers) without app logs.
  stackdriver_logging_config {
    sampling_ratio = 1.0
  }

  depends_on = [google_project_service.apis]
}
