output "bucket" {
  description = "Data and workdirs: --workdir=gs://BUCKET/runs/NAME."
  value       = "gs://${google_storage_bucket.data.name}"
}

output "image_repository" {
  description = "Push the trainer image here: docker push REPOSITORY/trainer:TAG."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "service_account" {
  description = "launch/tpu_vm.py --service_account."
  value       = google_service_account.trainer.email
}

output "gke_cluster" {
  description = "launch/gke.py --cluster (null without create_gke_cluster)."
  value       = one(google_container_cluster.griffin[*].name)
}

output "tpu_node_pool_shape" {
  description = "What one slice of var.tpu_type is on GKE."
  value = {
    machine_type    = local.tpu_machine_type
    hosts_per_slice = local.hosts_per_slice
    topology        = local.tpu_topology
  }
}

output "checkpoint_configuration" {
  description = "The multi-tier checkpointing RAM disk of the TPU nodes: pipe it to `kubectl apply -f -` once (null without multi_tier_checkpointing_ramdisk)."
  value = var.create_gke_cluster && var.multi_tier_checkpointing_ramdisk != "" ? yamlencode({
    apiVersion = "checkpointing.gke.io/v1"
    kind       = "CheckpointConfiguration"
    metadata   = { name = "griffin-local-tier" }
    spec = {
      cloudStorageBucketName = google_storage_bucket.data.name
      nodeSelector           = { "node.kubernetes.io/instance-type" = local.tpu_machine_type }
      tolerations            = [{ key = "google.com/tpu", operator = "Exists", effect = "NoSchedule" }]
      inMemoryVolumeSize     = var.multi_tier_checkpointing_ramdisk
    }
  }) : null
}
