"""The one table of accelerator hardware, and Google TPU accelerator types ->
compile-only topologies.

`GENERATIONS` holds every per-chip fact the code uses, one row per generation:
the `device_kind` strings JAX reports for it (`trainer/metrics.py` takes the
peak for MFU from there), peak bf16 FLOP/s, HBM size and bandwidth, ICI and
DCN bandwidths (`aot/` prices a step with them), and for a TPU the slice
shapes libtpu compiles for and how many chips a host drives. A GPU row has
only its device kinds and peak: nothing here compiles for or launches on GPUs.

User-facing names are Google's accelerator types. Their number counts TensorCores
for v4 and v5p (2 per chip: `v5p-128` is 64 chips, topology `v5p:4x4x4`) and
chips for v5e and v6e (`v5e-256` is 256 chips, `v5e:16x16`). This table is the
only place that translates one into the other; tests/test_aot.py pins it.

v4 is compiled as megacore (one JAX device per chip, both cores fused), as v4
pods run; libtpu's default v4 config would give two devices per chip.
No JAX import here: the table is plain data, usable before JAX starts.
"""

import dataclasses
import importlib
import os

from common.checks import check_int

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
  """Per-chip facts of one accelerator generation; None where the sources
  give none. Bandwidths in bytes/s."""

  name: str  # the table key; for a TPU the topology-name prefix libtpu takes, e.g. "v5p"
  device_kinds: tuple[str, ...]  # what JAX's `Device.device_kind` reports
  peak_bf16_flops: float  # per chip, dense
  hbm_bytes: int | None = None  # nominal, per chip
  usable_hbm_bytes: int | None = None  # what the TPU compiler lets a program use (libtpu 0.0.42)
  hbm_bandwidth: float | None = None
  ici_link: float | None = None  # one port, one direction
  ici_ports: int | None = None  # what the docs' per-chip ICI figure is spread over
  dcn: float | None = None  # per chip
  # TPU slices (none for a GPU row).
  counts_cores: bool = False  # the accelerator type counts cores (2 per chip), not chips
  shapes: dict[int, str] = dataclasses.field(default_factory=dict)  # chips -> "AxB" or "AxBxC"
  single_host_chips: int = 0  # the largest slice one host drives
  host_chips: int = 0  # chips per host in a larger slice
  topology_options: tuple[tuple[str, object], ...] = ()  # extra get_topology_desc kwargs


_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
       256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
       256: "16x16"}

# Sources, per chip. Google Cloud TPU documentation, system architecture pages
# (cloud.google.com/tpu/docs/v5p, /v5e, /v6e, /v4):
#   v5p: 459 TFLOP/s bf16; HBM 95 GiB, 2,765 GB/s; bidirectional ICI 1,200 GB/s
#        over 6 ports (3D torus) -> 100 GB/s per port and direction; DCN 50 Gbps
#        per chip.
#   v5e: 197 TFLOP/s; HBM 16 GiB, 819 GB/s; bidirectional ICI 400 GB/s over 4
#        ports (2D torus) -> 50 GB/s; DCN: two 100 Gbps NICs per 8-chip host ->
#        25 Gbps per chip.
#   v6e: 918 TFLOP/s; HBM 32 GiB, 1,638 GB/s; bidirectional ICI 800 GB/s over 4
#        ports -> 100 GB/s; DCN per chip not given.
#   v4:  275 TFLOP/s; HBM 32 GiB, 1,200 GB/s. ICI is not in the docs' table:
#        45 GB/s per link and direction over 6 ports is the JAX scaling book's
#        figure ("How to think about TPUs"), not checked against Google's docs.
#        DCN not given.
# Usable HBM is what libtpu's compiler reports ("exceeds available HBM
# (15.75G)"). Hosts: a TPU VM host drives 4 chips; v5e and v6e slices of up to
# 8 chips are one host (ct5lp-hightpu-8t, ct6e-standard-8t), as are 4-chip v4
# and v5p slices. A TPU v4/v5p JAX device is one chip (megacore); v5e and v6e
# report "lite" device kinds.
# NVIDIA H100 and H200 (SXM) datasheets: 1,979 TFLOP/s bf16 Tensor Core with
# 2:4 sparsity, half of it dense.
GENERATIONS = {
    "v4": Generation(
        "v4", ("TPU v4",), 275e12, 32 * GIB, int(30.75 * GIB), hbm_bandwidth=1200e9,
        ici_link=45e9, ici_ports=6, counts_cores=True, shapes=_3D, single_host_chips=4,
        host_chips=4, topology_options=(("chip_config_name", "megacore"),)),
    "v5p": Generation(
        "v5p", ("TPU v5", "TPU v5p"), 459e12, 95 * GIB, int(95.74 * GIB),
        hbm_bandwidth=2765e9, ici_link=100e9, ici_ports=6, dcn=50e9 / 8,
        counts_cores=True, shapes=_3D, single_host_chips=4, host_chips=4),
    "v5e": Generation(
        "v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GIB, int(15.75 * GIB),
        hbm_bandwidth=819e9, ici_link=50e9, ici_ports=4, dcn=25e9 / 8, shapes=_2D,
        single_host_chips=8, host_chips=4),
    "v6e": Generation(
        "v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GIB, int(31.25 * GIB),
        hbm_bandwidth=1638e9, ici_link=100e9, ici_ports=4, shapes=_2D,
        single_host_chips=8, host_chips=4),
    "h100": Generation("h100", ("NVIDIA H100 80GB HBM3",), 989e12),
    "h200": Generation("h200", ("NVIDIA H200",), 989e12),
}
_BY_DEVICE_KIND = {kind: gen for gen in GENERATIONS.values() for kind in gen.device_kinds}


def by_device_kind(device_kind: str) -> Generation | None:
  """The row of a JAX `device.device_kind`; None for one not in the table (CPU)."""
  return _BY_DEVICE_KIND.get(device_kind)


@dataclasses.dataclass(frozen=True)
class TpuType:
  """One accelerator type, e.g. `v5p-128`."""

  name: str  # the accelerator type, e.g. "v5p-128"
  topology_name: str  # for get_topology_desc, e.g. "v5p:4x4x4"
  chips: int
  generation: Generation  # its chips' facts

  def get_topology_desc(self, num_slices: int = 1):
    """The compile-only devices of `num_slices` slices of this type."""
    check_int("num_slices", num_slices)
    try:  # else JAX's bare "TPU support not installed"
      importlib.import_module("libtpu")
    except ImportError as e:
      raise ImportError(f"compiling for {self.name} needs libtpu, which is not installed: "
                        "pip install -e '.[tpu]' (a TPU VM) or -e '.[test]' (any "
                        "machine)") from e
    quiet_libtpu()
    from jax.experimental import topologies  # Only now: keep this module JAX-free.
    options = dict(self.generation.topology_options)
    if self.chips == 1:  # libtpu's default host is 2x2 chips; a 1-chip slice needs its own.
      options["chips_per_host_bounds"] = (1, 1, 1)
    if num_slices > 1:
      options["num_slices"] = num_slices
    return topologies.get_topology_desc(topology_name=self.topology_name,
                                        platform="tpu", **options)


def compile_only(lowered, **compile_kwargs):
  """`lowered.compile()` for a topology's compile-only devices, kept out of
  JAX's persistent compilation cache: such an executable cannot be read back
  without a TPU client, and every later read of it would warn ("PjRtCompiler
  must be constructed with a Client")."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  enabled = jax.config.jax_enable_compilation_cache
  # JAX decides once per process whether the cache is used; reset_cache makes
  # it decide again, on each side of this compile.
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    return lowered.compile(**compile_kwargs)
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


def _build_table() -> dict[str, TpuType]:
  table = {}
  for gen in GENERATIONS.values():
    for chips, shape in gen.shapes.items():
      name = f"{gen.name}-{chips * 2 if gen.counts_cores else chips}"
      table[name] = TpuType(name, f"{gen.name}:{shape}", chips, gen)
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
