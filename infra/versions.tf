# Offline here: `terraform fmt -check` runs in the tests, `terraform validate`
# needs the provider downloaded (run it where the registry is reachable).
terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}
