# Least privilege: the trainer reads and writes objects in its own bucket,
# pulls its own image, and writes logs and metrics. Nothing project-wide
# beyond the last two.

# Runs the trainer: the TPU VMs' service account (launch/tpu_vm.py
# --service_account), and on GKE the identity of the job's pods (below).
resource "google_service_account" "trainer" {
  account_id   = "${var.name}-trainer"
  display_name = "Griffin trainer"
  depends_on   = [google_project_service.apis]
}

locals {
  trainer = "serviceAccount:${google_service_account.trainer.email}"
}

# objectUser: read, write, list and delete objects (Orbax deletes old
# checkpoints); bucketViewer: the bucket's metadata, which gcsfs reads.
resource "google_storage_bucket_iam_member" "trainer" {
  for_each = toset(["roles/storage.objectUser", "roles/storage.bucketViewer"])
  bucket   = google_storage_bucket.data.name
  role     = each.value
  member   = local.trainer
}

resource "google_artifact_registry_repository_iam_member" "trainer_pulls" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = local.trainer
}

resource "google_project_iam_member" "trainer_telemetry" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project
  role     = each.value
  member   = local.trainer
}

# GKE nodes: the role Google defines for node service accounts (logs,
# metrics), and pulling the trainer's image.
resource "google_service_account" "gke_nodes" {
  count        = var.create_gke_cluster ? 1 : 0
  account_id   = "${var.name}-gke-nodes"
  display_name = "Griffin GKE nodes"
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "gke_nodes" {
  count   = var.create_gke_cluster ? 1 : 0
  project = var.project
  role    = "roles/container.defaultNodeServiceAccount"
  member  = "serviceAccount:${google_service_account.gke_nodes[0].email}"
}

resource "google_artifact_registry_repository_iam_member" "gke_nodes_pull" {
  count      = var.create_gke_cluster ? 1 : 0
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.gke_nodes[0].email}"
}

# GKE pods of the Kubernetes service account default/default (where xpk puts
# its JobSets) act as the trainer through Workload Identity, once that account
# is annotated: kubectl annotate serviceaccount default
# iam.gke.io/gcp-service-account=TRAINER_EMAIL (docs/launch.md).
resource "google_service_account_iam_member" "gke_pods_as_trainer" {
  count              = var.create_gke_cluster ? 1 : 0
  service_account_id = google_service_account.trainer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[default/default]"
  # The identity pool exists once the cluster does.
  depends_on = [google_container_cluster.griffin]
}
