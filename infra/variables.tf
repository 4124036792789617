variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the registry and the GKE cluster: the TPUs' region."
  type        = string
  default     = "us-east5"
}

variable "zone" {
  description = "Zone of the TPU slices (must offer var.tpu_type)."
  type        = string
  default     = "us-east5-a"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.zone))
    error_message = "zone must look like us-east5-a."
  }
}

variable "tpu_type" {
  description = "Accelerator type of one slice, as launch/ takes it: v5p-128 (v4/v5p count cores, 2 per chip), v5e-256 (v5e/v6e count chips)."
  type        = string
  default     = "v5p-128"

  validation {
    condition     = can(regex("^(v4|v5p|v5e|v6e)-[0-9]+$", var.tpu_type))
    error_message = "tpu_type must be one of v4-N, v5p-N, v5e-N, v6e-N (python -m aot.compile_check --help lists them)."
  }
}

variable "num_slices" {
  description = "TPU slices (GKE node pools) joined over DCN."
  type        = number
  default     = 1

  validation {
    condition     = var.num_slices >= 1 && floor(var.num_slices) == var.num_slices
    error_message = "num_slices must be a positive integer."
  }
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "griffin"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{0,19}$", var.name))
    error_message = "name must be 1-20 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "bucket_name" {
  description = "Globally unique name of the data and checkpoint bucket."
  type        = string
}

variable "runs_prefix" {
  description = "Where workdirs live in the bucket (gs://BUCKET/runs/NAME); the lifecycle rule applies under it only."
  type        = string
  default     = "runs/"
}

variable "checkpoint_retention_days" {
  description = "Objects under runs_prefix older than this are deleted (old checkpoints of finished runs); 0 keeps them forever."
  type        = number
  default     = 180
}

variable "create_gke_cluster" {
  description = "Create a GKE cluster with one TPU node pool per slice (for launch/gke.py); false for TPU VMs only (launch/tpu_vm.py)."
  type        = bool
  default     = false
}

variable "multi_tier_checkpointing_ramdisk" {
  description = "RAM disk per TPU node for the trainer's local checkpoint tier on GKE (GKE's multi-tier checkpointing addon, e.g. \"24Gi\"); empty for none. Size it at 4 x (12 bytes x parameters / hosts) plus a margin: own and peer copies of local_max_to_keep (2) steps."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^([0-9]+(Mi|Gi))?$", var.multi_tier_checkpointing_ramdisk))
    error_message = "multi_tier_checkpointing_ramdisk must be empty or a size such as 24Gi or 60000Mi."
  }
}

variable "spot" {
  description = "GKE TPU node pools on Spot VMs (preemptible, cheaper)."
  type        = bool
  default     = false
}

variable "reservation" {
  description = "Name of a TPU reservation the GKE node pools consume; empty for none."
  type        = string
  default     = ""
}

variable "master_authorized_cidrs" {
  description = "CIDR blocks allowed to reach the GKE control plane (your workstation or VPN)."
  type        = list(string)
  default     = []
}
