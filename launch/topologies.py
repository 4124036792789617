"""Google TPU accelerator types -> compile-only topologies, chips, HBM, peak FLOP/s.

User-facing names are Google's accelerator types. Their number counts TensorCores
for v4 and v5p (2 per chip: `v5p-128` is 64 chips, topology `v5p:4x4x4`) and
chips for v5e and v6e (`v5e-256` is 256 chips, `v5e:16x16`). This table is the
only place that translates one into the other; tests/test_aot.py pins it.

v4 is compiled as megacore (one JAX device per chip, both cores fused), as v4
pods run; libtpu's default v4 config would give two devices per chip.
No JAX import here: the table is plain data, usable before JAX starts.
"""

import dataclasses
import os

GIB = 2**30

# libtpu looks for a TPU VM's metadata when it loads; on a plain host the first
# two stop its warnings (they do not change what is compiled). Compile-only use
# touches no TPU, so several processes may load libtpu at once (without the
# third, the second one fails on /tmp/libtpu_lockfile).
LIBTPU_ENV = (("TPU_ACCELERATOR_TYPE", "v5p-8"), ("TPU_WORKER_HOSTNAMES", "localhost"),
              ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"))


def quiet_libtpu():
  """Sets LIBTPU_ENV where unset; call before libtpu loads (the first topology)."""
  for name, value in LIBTPU_ENV:
    os.environ.setdefault(name, value)


@dataclasses.dataclass(frozen=True)
class Generation:
  """Per-chip numbers of one TPU generation (Google Cloud TPU docs)."""

  prefix: str  # the topology-name prefix libtpu takes, e.g. "v5p"
  counts_cores: bool  # the accelerator type counts cores (2 per chip), not chips
  hbm_bytes: int  # nominal, per chip
  usable_hbm_bytes: int  # what the compiler lets a program use (libtpu 0.0.42)
  peak_bf16_flops: float  # per chip, dense
  shapes: dict[int, str]  # chips -> "AxB" or "AxBxC"
  topology_options: tuple[tuple[str, object], ...] = ()  # extra get_topology_desc kwargs


_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
       256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
       256: "16x16"}

GENERATIONS = {
    "v4": Generation("v4", True, 32 * GIB, int(30.75 * GIB), 275e12, _3D,
                     (("chip_config_name", "megacore"),)),
    "v5p": Generation("v5p", True, 95 * GIB, int(95.74 * GIB), 459e12, _3D),
    "v5e": Generation("v5e", False, 16 * GIB, int(15.75 * GIB), 197e12, _2D),
    "v6e": Generation("v6e", False, 32 * GIB, int(31.25 * GIB), 918e12, _2D),
}


@dataclasses.dataclass(frozen=True)
class TpuType:
  """One accelerator type, e.g. `v5p-128`."""

  name: str  # the accelerator type, e.g. "v5p-128"
  topology_name: str  # for get_topology_desc, e.g. "v5p:4x4x4"
  chips: int
  hbm_bytes: int  # nominal, per chip
  usable_hbm_bytes: int  # the compiler's limit ("exceeds available HBM (15.75G)")
  peak_bf16_flops: float  # per chip
  topology_options: tuple[tuple[str, object], ...]

  def get_topology_desc(self, num_slices: int = 1):
    """The compile-only devices of `num_slices` slices of this type."""
    if not isinstance(num_slices, int) or isinstance(num_slices, bool) or num_slices < 1:
      raise ValueError(f"num_slices={num_slices!r} must be a positive integer.")
    quiet_libtpu()
    from jax.experimental import topologies  # Only now: keep this module JAX-free.
    options = dict(self.topology_options)
    if self.chips == 1:  # libtpu's default host is 2x2 chips; a 1-chip slice needs its own.
      options["chips_per_host_bounds"] = (1, 1, 1)
    if num_slices > 1:
      options["num_slices"] = num_slices
    return topologies.get_topology_desc(topology_name=self.topology_name,
                                        platform="tpu", **options)


def _build_table() -> dict[str, TpuType]:
  table = {}
  for gen in GENERATIONS.values():
    for chips, shape in gen.shapes.items():
      name = f"{gen.prefix}-{chips * 2 if gen.counts_cores else chips}"
      table[name] = TpuType(name, f"{gen.prefix}:{shape}", chips, gen.hbm_bytes,
                            gen.usable_hbm_bytes, gen.peak_bf16_flops,
                            gen.topology_options)
  return table


TPU_TYPES: dict[str, TpuType] = _build_table()


def get(accelerator_type: str) -> TpuType:
  """The table row of `accelerator_type`; ValueError lists the valid ones."""
  if accelerator_type not in TPU_TYPES:
    raise ValueError(
        f"unknown TPU accelerator type {accelerator_type!r}; valid: "
        f"{', '.join(TPU_TYPES)} (v4/v5p count cores, 2 per chip: v5p-128 is 64 "
        "chips; v5e/v6e count chips).")
  return TPU_TYPES[accelerator_type]
