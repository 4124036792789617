# The trainer's image (infra/Dockerfile): REGION-docker.pkg.dev/PROJECT/NAME/trainer:TAG.
resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84: a customer-managed key adds a KMS key to run for an image of public code; Google-managed encryption applies.
  location      = var.region
  repository_id = var.name
  format        = "DOCKER"
  description   = "Griffin trainer images"

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}
