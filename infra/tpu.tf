# Accelerator type -> GKE node pool shape. The topology tables are those of
# sharding/topologies.py (tests/test_infra.py checks they agree).
locals {
  tpu_generation = split("-", var.tpu_type)[0]
  tpu_size       = tonumber(split("-", var.tpu_type)[1])
  # v4 and v5p types count TensorCores (2 per chip); v5e and v6e count chips.
  tpu_chips = contains(["v4", "v5p"], local.tpu_generation) ? local.tpu_size / 2 : local.tpu_size

  topology_3d = {
    "4"    = "2x2x1"
    "8"    = "2x2x2"
    "16"   = "2x2x4"
    "32"   = "2x4x4"
    "64"   = "4x4x4"
    "128"  = "4x4x8"
    "256"  = "4x8x8"
    "512"  = "8x8x8"
    "1024" = "8x8x16"
    "2048" = "8x16x16"
    "4096" = "16x16x16"
  }
  topology_2d = {
    "1"   = "1x1"
    "4"   = "2x2"
    "8"   = "2x4"
    "16"  = "4x4"
    "32"  = "4x8"
    "64"  = "8x8"
    "128" = "8x16"
    "256" = "16x16"
  }
  tpu_topology = lookup(
    contains(["v4", "v5p"], local.tpu_generation) ? local.topology_3d : local.topology_2d,
    tostring(local.tpu_chips), null
  )

  # One host drives 4 chips; v5e/v6e slices of up to 8 chips are a single host.
  chips_per_host  = contains(["v5e", "v6e"], local.tpu_generation) && local.tpu_chips <= 8 ? local.tpu_chips : 4
  hosts_per_slice = floor(local.tpu_chips / local.chips_per_host)
  machine_family = {
    v4  = "ct4p-hightpu"
    v5p = "ct5p-hightpu"
    v5e = "ct5lp-hightpu"
    v6e = "ct6e-standard"
  }
  tpu_machine_type = "${local.machine_family[local.tpu_generation]}-${local.chips_per_host}t"
}
