# Data (gs://BUCKET/data/...) and workdirs (gs://BUCKET/runs/NAME: checkpoints,
# metrics, TensorBoard), in the TPUs' region so reads and saves stay local.
resource "google_storage_bucket" "data" {
  # checkov:skip=CKV_GCP_62: access logs need a second bucket; Cloud Audit Logs (data access) cover who read what.
  # checkov:skip=CKV_GCP_78: versioning keeps every checkpoint Orbax deletes (max_to_keep): a 14B state is ~170 GB per save.
  name                        = var.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Soft delete would keep each deleted checkpoint for 7 days, as versioning would.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  # Old checkpoints: a run keeps its newest ones itself (checkpoint.max_to_keep);
  # what ages out here are finished runs and keep_period checkpoints.
  dynamic "lifecycle_rule" {
    for_each = var.checkpoint_retention_days > 0 ? [1] : []
    content {
      condition {
        age            = var.checkpoint_retention_days
        matches_prefix = [var.runs_prefix]
      }
      action {
        type = "Delete"
      }
    }
  }

  # Uploads a preempted host never finished.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  labels = {
    app = var.name
  }

  depends_on = [google_project_service.apis]
}
