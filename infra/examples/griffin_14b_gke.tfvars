# Griffin-14B on 2 x v5p-128 GKE node pools (launch/gke.py submits to them).
project                 = "my-project"
region                  = "us-east5"
zone                    = "us-east5-a"
bucket_name             = "my-project-griffin"
tpu_type                = "v5p-128"
num_slices              = 2
create_gke_cluster      = true
spot                    = true
master_authorized_cidrs = ["203.0.113.0/24"]
# The local tier: own and peer copies of 2 steps, 14B x 12 bytes / 32 hosts each.
multi_tier_checkpointing_ramdisk = "24Gi"
