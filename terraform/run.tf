# The GPU service. One request at a time per instance (one job slice on one L4), CPU always allocated
# (instance-based billing, which GPU services require), scale to zero when no work is queued.

resource "google_cloud_run_v2_service" "trainer" {
  name                = var.service_name
  project             = var.project_id
  location            = var.region
  ingress             = var.ingress
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.runtime.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    timeout                          = "3600s" # Cloud Run's maximum; push callers give up at their own ack deadline
    max_instance_request_concurrency = 1
    gpu_zonal_redundancy_disabled    = var.gpu_zonal_redundancy_disabled

    scaling {
      min_instance_count = 0
      max_instance_count = var.max_instances
    }

    node_selector {
      accelerator = "nvidia-l4"
    }

    containers {
      image = var.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu              = tostring(var.cpu)
          memory           = "${var.memory_gib}Gi"
          "nvidia.com/gpu" = "1"
        }
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      # Until /healthz answers, no delivery is routed to a new instance. No liveness probe: the one
      # worker is busy for a whole slice and could not answer it.
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
    google_pubsub_topic_iam_member.runtime_publishes_work,
  ]
}
