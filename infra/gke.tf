# For launch/gke.py (xpk): a regional cluster with its nodes in var.zone, one
# small CPU pool for system pods, and one TPU node pool per slice (xpk puts one
# JobSet replica on each). Only with create_gke_cluster = true.
resource "google_container_cluster" "griffin" {
  # checkov:skip=CKV_GCP_65: RBAC through Google Groups needs a Workspace domain the project may not have.
  # checkov:skip=CKV_GCP_24: PodSecurityPolicy was removed from Kubernetes in 1.25.
  count          = var.create_gke_cluster ? 1 : 0
  name           = var.name
  location       = var.region
  node_locations = [var.zone]
  network        = google_compute_network.gke[0].id
  subnetwork     = google_compute_subnetwork.gke[0].id

  # Node pools are their own resources below.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = true

  release_channel {
    channel = "REGULAR"
  }

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = "172.16.0.0/28"
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_cidrs
      content {
        cidr_block = cidr_blocks.value
      }
    }
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  workload_identity_config {
    workload_pool = "${var.project}.svc.id.goog"
  }

  # Calico enforces NetworkPolicy objects; the addon must be on for it.
  network_policy {
    enabled = true
  }
  addons_config {
    network_policy_config {
      disabled = false
    }
    # The node RAM disk that xpk's --mtc-enabled mounts for the local tier.
    dynamic "high_scale_checkpointing_config" {
      for_each = var.multi_tier_checkpointing_ramdisk == "" ? [] : [1]
      content {
        enabled = true
      }
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  enable_intranode_visibility = true
  enable_shielded_nodes       = true

  resource_labels = {
    app = var.name
  }

  # The default pool is removed right after creation; it is hardened anyway.
  node_config {
    service_account = google_service_account.gke_nodes[0].email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    image_type      = "COS_CONTAINERD"
    metadata = {
      disable-legacy-endpoints = "true"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }

  depends_on = [google_project_service.apis, google_project_iam_member.gke_nodes]
}

# kube-dns, the JobSet controller and other system pods (TPU nodes are tainted).
resource "google_container_node_pool" "system" {
  count          = var.create_gke_cluster ? 1 : 0
  name           = "system"
  cluster        = google_container_cluster.griffin[0].id
  location       = var.region
  node_locations = [var.zone]
  node_count     = 1

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = "e2-standard-4"
    service_account = google_service_account.gke_nodes[0].email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    image_type      = "COS_CONTAINERD"
    metadata = {
      disable-legacy-endpoints = "true"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

# One node pool per slice: hosts_per_slice TPU VMs in one placement (a slice).
resource "google_container_node_pool" "tpu" {
  count          = var.create_gke_cluster ? var.num_slices : 0
  name           = "tpu-slice-${count.index}"
  cluster        = google_container_cluster.griffin[0].id
  location       = var.region
  node_locations = [var.zone]
  node_count     = local.hosts_per_slice

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # Multi-host slices: the nodes form one TPU topology.
  dynamic "placement_policy" {
    for_each = local.hosts_per_slice > 1 ? [1] : []
    content {
      type         = "COMPACT"
      tpu_topology = local.tpu_topology
    }
  }

  node_config {
    machine_type    = local.tpu_machine_type
    spot            = var.spot
    service_account = google_service_account.gke_nodes[0].email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    image_type      = "COS_CONTAINERD"
    metadata = {
      disable-legacy-endpoints = "true"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    dynamic "reservation_affinity" {
      for_each = var.reservation == "" ? [] : [var.reservation]
      content {
        consume_reservation_type = "SPECIFIC_RESERVATION"
        key                      = "compute.googleapis.com/reservation-name"
        values                   = [reservation_affinity.value]
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.tpu_topology != null
      error_message = "tpu_type ${var.tpu_type} is not a slice size sharding/topologies.py knows."
    }
  }
}
