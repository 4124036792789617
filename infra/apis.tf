# What an empty project needs switched on. Destroying this configuration leaves
# the APIs on: other things in the project may use them.
resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "storage.googleapis.com",
    "tpu.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}
