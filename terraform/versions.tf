terraform {
  required_version = ">= 1.9" # cross-variable validation blocks

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 7.14, < 8"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.7, < 3"
    }
    time = {
      source  = "hashicorp/time"
      version = ">= 0.12, < 1"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = local.labels
}
