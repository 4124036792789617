# A private network for the GKE cluster: nodes without public addresses reach
# Google APIs (the image registry, the bucket) through Private Google Access.
# The TPU VMs of launch/tpu_vm.py use the project's default network, which
# `gcloud compute tpus tpu-vm ssh` reaches directly.
resource "google_compute_network" "gke" {
  count                   = var.create_gke_cluster ? 1 : 0
  name                    = "${var.name}-gke"
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "gke" {
  count                    = var.create_gke_cluster ? 1 : 0
  name                     = "${var.name}-gke"
  network                  = google_compute_network.gke[0].id
  region                   = var.region
  ip_cidr_range            = "10.0.0.0/20"
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = "10.4.0.0/14"
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = "10.8.0.0/20"
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Slices talk over DCN (node to node, pod to pod); nothing else may come in
# (GKE adds its own rules for the control plane).
resource "google_compute_firewall" "gke_internal" {
  count         = var.create_gke_cluster ? 1 : 0
  name          = "${var.name}-gke-internal"
  network       = google_compute_network.gke[0].id
  direction     = "INGRESS"
  source_ranges = ["10.0.0.0/20", "10.4.0.0/14"]

  allow {
    protocol = "all"
  }

  log_config {
    metadata = "EXCLUDE_ALL_METADATA"
  }
}
