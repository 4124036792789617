"""The time model of a train step on one TPU chip: a roofline over its
per-chip figures, and the bandwidth a collective gets from its group of chips.
The hardware's numbers come from `sharding/topologies.py`.

The roofline, per chip:
  compute   = FLOPs / peak bf16 FLOP/s
  memory    = HBM bytes / HBM bandwidth
  comm      = sum over collectives of traffic / bandwidth of its group
  step      = sum over the two parts p (outside the loops, the loop bodies) of
              max(compute_p, memory_p, comm_p)   (collectives fully overlapped)
              max(compute_p, memory_p) + comm_p  (no overlap: the upper bound)
The max is taken per part, not over the whole step, so the elementwise,
memory-bound optimizer update cannot hide under the layers' matmuls. It is
still an aggregate inside each part: the matmuls and the elementwise work of
a layer are assumed to overlap, which the hardware does only in part, so the
estimate is optimistic (XLA's per-op `optimal_seconds` is printed beside it).
The collectives inside the loops are the FSDP weight all-gathers and the
gradient reductions, which XLA issues asynchronously around the layer's
compute (async collective fusions), hence "overlapped" as the main figure.
XLA's `optimal_seconds` (undocumented; it appears to be the compiler's own
per-op estimate) is extrapolated like the FLOPs and printed as a second,
less optimistic figure.

Bandwidth of a collective over a group of chips: a ring in both directions
along every torus axis the group spans, i.e. 2 x axes x one-way link
bandwidth (the JAX scaling book's model); DCN per chip when the group spans
slices. A slice without wraparound links on an axis gets about half of that.

HBM bytes are XLA's "bytes accessed": operands and outputs of every fused
op, which counts buffers the compiler keeps in VMEM too (an overestimate of
HBM traffic), and assumes each fusion reads its inputs once.
"""

import numpy as np

from aot import hlo
from sharding import topologies


def group_seconds(collective: hlo.Collective, devices: list,
                  chip: topologies.Generation) -> float:
  """Time of one run of `collective` on one chip of generation `chip` (see the
  module docstring)."""
  traffic = collective.traffic_bytes
  if traffic == 0:
    return 0.0
  members = [devices[i] for i in collective.group]
  if len({getattr(d, "slice_index", 0) for d in members}) > 1:
    if chip.dcn is None:
      raise ValueError(f"{chip.name} has no DCN bandwidth in sharding/topologies.py; "
                       "multi-slice estimates need one")
    return traffic / chip.dcn
  coords = np.array([d.coords for d in members])
  axes = max(int(sum(len(set(coords[:, a])) > 1 for a in range(coords.shape[1]))), 1)
  return traffic / (2 * axes * chip.ici_link)


def roofline(parts: dict[str, tuple[float, float]], tpu: topologies.TpuType) -> dict:
  """Times per chip from per-chip {figure: (outside the loops, inside)}."""
  chip = tpu.generation
  out = dict(overlapped_s=0.0, serial_s=0.0)
  for i in (0, 1):
    compute = parts["flops"][i] / chip.peak_bf16_flops
    memory = parts["bytes"][i] / chip.hbm_bandwidth
    comm = parts["comm_seconds"][i]
    out["overlapped_s"] += max(compute, memory, comm)
    out["serial_s"] += max(compute, memory) + comm
  out["compute_s"] = sum(parts["flops"]) / chip.peak_bf16_flops
  out["memory_s"] = sum(parts["bytes"]) / chip.hbm_bandwidth
  out["comm_s"] = sum(parts["comm_seconds"])
  out["xla_s"] = sum(parts["xla_seconds"])
  return out
