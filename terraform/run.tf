# The Cloud Run services, both from one codebase (`python -m consumer serve --role ROLE`):
# - trainer: the GPU service (one NVIDIA L4). Role "all" with topology = "single" (it is also the
#   front, taking requests while a slice runs), role "worker" with "scale-out" (only POST /work).
# - api: topology = "scale-out" only. A CPU service from the image without torch (role "api"): the
#   upload push, POST /train and GET /jobs/<id>, scaling to zero, so none of them ever wakes a GPU.
# The app runs at most one slice per instance whatever the concurrency: a second POST /work is
# answered "retry later" and the queue retries it.

resource "google_cloud_run_v2_service" "trainer" {
  name                = var.service_name
  project             = var.project_id
  location            = var.region
  ingress             = var.ingress
  deletion_protection = var.deletion_protection

  template {
    service_account       = google_service_account.runtime.email
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
    # Cloud Run's maximum; the queue gives up on a slice at its dispatch deadline (≤ 1800 s) first.
    timeout = "3600s"
    # As the front, requests are taken while a slice runs. As a pure worker, one request per instance,
    # so Cloud Run routes each dispatched slice to an idle GPU rather than next to a running one.
    max_instance_request_concurrency = local.single_topology ? var.request_concurrency : 1
    gpu_zonal_redundancy_disabled    = var.gpu_zonal_redundancy_disabled

    scaling {
      min_instance_count = 0
      max_instance_count = var.max_instances # also the work queue's max_concurrent_dispatches
    }

    node_selector {
      accelerator = "nvidia-l4"
    }

    containers {
      image   = var.worker_image
      command = ["python", "-m", "consumer"]
      args    = ["serve", "--role", local.gpu_service_role]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu              = tostring(var.cpu)
          memory           = "${var.memory_gib}Gi"
          "nvidia.com/gpu" = "1"
        }
        cpu_idle          = false # GPU services need instance-based billing
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.gpu_service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      # Until /healthz answers, no request is routed to a new instance. No liveness probe: a probe
      # that times out while a slice holds the CPU would restart the instance and lose the slice.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 10
        timeout_seconds       = 5
        failure_threshold     = 24 # 240 s: image streaming, CUDA initialisation, asset checks
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_storage_bucket_iam_member.runtime_reads_inbox,
    google_storage_bucket_iam_member.runtime_owns_state,
    google_storage_bucket_iam_member.runtime_writes_models,
    google_pubsub_topic_iam_member.runtime_publishes_results,
    google_cloud_tasks_queue_iam_member.runtime_enqueues_work,
    google_service_account_iam_member.runtime_acts_as_tasks,
  ]
}

resource "google_cloud_run_v2_service" "api" {
  count = local.scale_out_topology ? 1 : 0

  name                = "${var.service_name}-api"
  project             = var.project_id
  location            = var.region
  ingress             = var.ingress
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.api[0].email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    timeout                          = "300s" # intake, /train and status answer in seconds
    max_instance_request_concurrency = var.request_concurrency

    scaling {
      min_instance_count = 0 # nothing is billed while nobody uploads or asks
      max_instance_count = var.api_max_instances
    }

    containers {
      image   = var.api_image
      command = ["python", "-m", "consumer"]
      args    = ["serve", "--role", "api"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle          = true # request-based billing: CPU only while a request is in flight
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.api_service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 2
        timeout_seconds       = 2
        failure_threshold     = 15 # 30 s; no torch, so it starts in seconds
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_storage_bucket_iam_member.api_reads_inbox,
    google_storage_bucket_iam_member.api_owns_state,
    google_pubsub_topic_iam_member.api_publishes_results,
    google_cloud_tasks_queue_iam_member.api_enqueues_work,
    google_service_account_iam_member.api_acts_as_tasks,
  ]
}
