# --- where ---------------------------------------------------------------------------------------
variable "project_id" {
  type        = string
  description = "Google Cloud project to deploy into (it needs billing and Cloud Run L4 GPU quota in `region`)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits, hyphens), not a project number or name."
  }
}

variable "region" {
  type        = string
  description = "Region of every resource; Cloud Run must offer NVIDIA L4 GPUs there (e.g. us-central1, us-east4, europe-west1, europe-west4, asia-southeast1)."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as us-central1 (not a zone such as us-central1-a)."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of topic, subscription, service-account and function names."
  default     = "rvc"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix must be 2-12 characters: lowercase letters, digits, hyphens, starting with a letter."
  }
}

variable "bucket_name_prefix" {
  type        = string
  description = "Prefix of the bucket names (globally unique); null means \"<project_id>-<name_prefix>\"."
  default     = null

  validation {
    condition     = var.bucket_name_prefix == null || can(regex("^[a-z0-9][a-z0-9-]{1,40}$", var.bucket_name_prefix))
    error_message = "bucket_name_prefix must be 2-41 characters: lowercase letters, digits and hyphens."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for every resource that takes labels."
  default     = {}
}

variable "force_destroy" {
  type        = bool
  description = "Let `terraform destroy` delete buckets that still hold objects (datasets, models, job state)."
  default     = false
}

# --- the service ---------------------------------------------------------------------------------
variable "worker_image" {
  type        = string
  description = "GPU image (Dockerfile target `worker`) of the GPU service; deploy.sh passes the digest it just built, e.g. REGION-docker.pkg.dev/PROJECT/rvc-trainer/worker@sha256:…"

  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.worker_image))
    error_message = "worker_image must be a full image reference with a tag or a digest, e.g. us-central1-docker.pkg.dev/p/rvc-trainer/worker:v1."
  }
}

variable "api_image" {
  type        = string
  description = "CPU image without torch (Dockerfile target `api`) of the front service; needed only with topology = \"scale-out\" (deploy.sh builds and passes it then)."
  default     = null

  validation {
    condition     = var.api_image == null || can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.api_image))
    error_message = "api_image must be a full image reference with a tag or a digest, e.g. us-central1-docker.pkg.dev/p/rvc-trainer/api:v1."
  }

  validation {
    condition     = var.topology != "scale-out" || var.api_image != null
    error_message = "topology = \"scale-out\" needs api_image (the Dockerfile's `api` target; deploy.sh --topology scale-out builds it)."
  }
}

variable "topology" {
  type        = string
  description = "\"single\": one GPU service (role all) takes uploads, /train, status and the work slices. \"scale-out\": a CPU service without torch (role api, scales to zero) takes uploads, /train and status, and the GPU service (role worker) only the work slices. See docs/deploy.md."
  default     = "single"

  validation {
    condition     = contains(["single", "scale-out"], var.topology)
    error_message = "topology must be \"single\" or \"scale-out\"."
  }
}

variable "service_name" {
  type        = string
  description = "Name of the GPU Cloud Run service; the scale-out front is \"<service_name>-api\". At most 45 characters, so that the GPU service keeps its deterministic URL (<name>-<project number>.<region>.run.app, which WORK_URL is built from) and the front's name fits."
  default     = "rvc-trainer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,43}[a-z0-9]$", var.service_name))
    error_message = "service_name must be 2-45 characters: lowercase letters, digits, hyphens."
  }
}

variable "artifact_repository" {
  type        = string
  description = "Artifact Registry (Docker) repository that receives the image."
  default     = "rvc-trainer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.artifact_repository))
    error_message = "artifact_repository must be lowercase letters, digits and hyphens."
  }
}

variable "cpu" {
  type        = number
  description = "vCPUs per instance. Cloud Run's L4 instances take 4 or 8."
  default     = 4

  validation {
    condition     = contains([4, 8], var.cpu)
    error_message = "cpu must be 4 or 8 (Cloud Run's GPU instances need at least 4)."
  }
}

variable "memory_gib" {
  type        = number
  description = "Memory per instance, GiB: at least 16 (Cloud Run's GPU minimum), at most 4 GiB per vCPU."
  default     = 16

  validation {
    condition     = var.memory_gib >= 16 && var.memory_gib <= 32 && floor(var.memory_gib) == var.memory_gib
    error_message = "memory_gib must be a whole number from 16 to 32."
  }

  validation {
    condition     = var.memory_gib <= 4 * var.cpu
    error_message = "memory_gib may be at most 4 GiB per vCPU: 16 with cpu = 4, 32 with cpu = 8."
  }
}

variable "max_instances" {
  type        = number
  description = "Most GPU instances at once, and so the work queue's max_concurrent_dispatches (WORKER_SLOTS): slices running at once. Keep it within your Cloud Run L4 quota."
  default     = 1

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 100 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number from 1 to 100 (and within your GPU quota)."
  }
}

variable "request_concurrency" {
  type        = number
  description = "Requests at once per instance of the service that takes uploads, /train and status (the GPU service with topology = \"single\", the CPU front with \"scale-out\"). Above 1, so intake and status are answered while a slice runs; the app still runs at most one slice per instance."
  default     = 8

  validation {
    condition     = var.request_concurrency >= 2 && var.request_concurrency <= 80 && floor(var.request_concurrency) == var.request_concurrency
    error_message = "request_concurrency must be a whole number from 2 to 80 (1 would make an upload wait behind a slice)."
  }
}

variable "api_max_instances" {
  type        = number
  description = "Most instances of the CPU front (topology = \"scale-out\"); it scales to zero."
  default     = 4

  validation {
    condition     = var.api_max_instances >= 1 && var.api_max_instances <= 100 && floor(var.api_max_instances) == var.api_max_instances
    error_message = "api_max_instances must be a whole number from 1 to 100."
  }
}

variable "gpu_zonal_redundancy_disabled" {
  type        = bool
  description = "Turn GPU zonal redundancy off: cheaper per GPU-second and uses the non-redundant quota; best-effort capacity in a zonal outage (a lost slice is redelivered anyway)."
  default     = true
}

variable "ingress" {
  type        = string
  description = "Who may reach the service over the network. Pub/Sub and Eventarc pushes from this project count as internal; INGRESS_TRAFFIC_ALL also lets users call POST /train and GET /jobs/<id> with an identity token. Every caller still needs run.invoker."
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL or INGRESS_TRAFFIC_INTERNAL_ONLY."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the Cloud Run service on destroy (it holds no data; jobs live in the state bucket)."
  default     = false
}

# --- what the service does (environment variables) ------------------------------------------------
variable "inbox_prefix" {
  type        = string
  description = "Uploads under this prefix of the inbox bucket start jobs (INBOX_PREFIX); only it is notified."
  default     = "datasets/"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/$", var.inbox_prefix)) && !startswith(var.inbox_prefix, "gcloud/")
    error_message = "inbox_prefix must be a folder such as \"datasets/\": not empty, ending in \"/\", not under gcloud/ (where parallel uploads put their parts)."
  }
}

variable "trigger" {
  type        = string
  description = "How uploads reach the front service: \"notification\" (a Cloud Storage notification on the inbox prefix → intake topic → push subscription, with retries and dead-lettering) or \"eventarc\" (an Eventarc Cloud Storage trigger: no prefix filter, a 10 s ack deadline; see docs/deploy.md)."
  default     = "notification"

  validation {
    condition     = contains(["notification", "eventarc"], var.trigger)
    error_message = "trigger must be \"notification\" or \"eventarc\"."
  }
}

variable "dispatch_deadline_seconds" {
  type        = number
  description = "How long the work queue waits for one slice's answer, s (DISPATCH_DEADLINE_SECONDS, set on each task by the app). The app derives the slice's training budget from it, less a margin for start-up and upload. Cloud Tasks allows at most 1800."
  default     = 1800

  validation {
    condition     = var.dispatch_deadline_seconds >= 300 && var.dispatch_deadline_seconds <= 1800 && floor(var.dispatch_deadline_seconds) == var.dispatch_deadline_seconds
    error_message = "dispatch_deadline_seconds must be a whole number from 300 to 1800 (Cloud Tasks' limit for HTTP tasks is 30 minutes)."
  }
}

variable "max_consecutive_failures" {
  type        = number
  description = "Failed slices of one job in a row after which the service marks the job failed (MAX_CONSECUTIVE_FAILURES)."
  default     = 3

  validation {
    condition     = var.max_consecutive_failures >= 1 && var.max_consecutive_failures <= 100 && floor(var.max_consecutive_failures) == var.max_consecutive_failures
    error_message = "max_consecutive_failures must be a whole number from 1 to 100."
  }
}

variable "train_preset" {
  type        = string
  description = "Network size (TRAIN_PRESET): \"full\" (RVC's) or \"tiny\" (smoke tests only)."
  default     = "full"

  validation {
    condition     = contains(["full", "tiny"], var.train_preset)
    error_message = "train_preset must be \"full\" or \"tiny\"."
  }
}

variable "rvc_assets" {
  type        = string
  description = "Weight files (RVC_ASSETS): the folder baked into the image (/opt/rvc-assets), a gs:// folder read at start when the image was built with BAKE_ASSETS=0, or \"none\" (random weights, tests only)."
  default     = "/opt/rvc-assets"

  validation {
    condition     = startswith(var.rvc_assets, "/") || can(regex("^gs://[a-z0-9][a-z0-9._-]{1,220}(/.*)?$", var.rvc_assets)) || var.rvc_assets == "none"
    error_message = "rvc_assets must be an absolute path in the image, a gs://BUCKET/FOLDER or \"none\"."
  }
}

variable "rvc_pretrained" {
  type        = string
  description = "Pretrained generator/discriminator folder (RVC_PRETRAINED): same forms as rvc_assets; the baked image keeps them in /opt/rvc-assets."
  default     = "/opt/rvc-assets"

  validation {
    condition     = startswith(var.rvc_pretrained, "/") || can(regex("^gs://[a-z0-9][a-z0-9._-]{1,220}(/.*)?$", var.rvc_pretrained)) || var.rvc_pretrained == "none"
    error_message = "rvc_pretrained must be an absolute path in the image, a gs://BUCKET/FOLDER or \"none\"."
  }
}

# --- retention and delivery ----------------------------------------------------------------------
variable "dataset_retention_days" {
  type        = number
  description = "Uploaded datasets under inbox_prefix are deleted this many days after upload (the job copies what it needs into the state bucket)."
  default     = 14

  validation {
    condition     = var.dataset_retention_days >= 1 && var.dataset_retention_days <= 3650
    error_message = "dataset_retention_days must be from 1 to 3650."
  }
}

variable "state_retention_days" {
  type        = number
  description = "Job records, stage outputs and checkpoints are deleted this many days after they were last written (finished jobs stop writing)."
  default     = 30

  validation {
    condition     = var.state_retention_days >= 7 && var.state_retention_days <= 3650
    error_message = "state_retention_days must be from 7 (longer than any job runs) to 3650."
  }
}

variable "model_noncurrent_retention_days" {
  type        = number
  description = "Overwritten or deleted model files stay recoverable (object versioning) for this many days."
  default     = 30

  validation {
    condition     = var.model_noncurrent_retention_days >= 1 && var.model_noncurrent_retention_days <= 3650
    error_message = "model_noncurrent_retention_days must be from 1 to 3650."
  }
}

variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of one upload notification before Pub/Sub moves it to the dead-letter topic (5-100). Work slices are not counted here: the work queue retries them without limit."
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be from 5 to 100 (Pub/Sub's limits)."
  }
}

variable "results_subscription" {
  type        = string
  description = "Name of the pull subscription on the results topic that users read."
  default     = "rvc-results"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9._~+%-]{2,254}$", var.results_subscription)) && !startswith(var.results_subscription, "goog")
    error_message = "results_subscription must be a valid subscription name (3-255 characters, starting with a letter, not with \"goog\")."
  }
}
