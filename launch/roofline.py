"""Roofline estimate of one train step on a TPU pod, from compile-only checks.

Per chip and step: hardware FLOPs and HBM bytes (XLA's `cost_analysis()` of
the compiled step), ICI bytes and time (the collectives of the compiled HLO,
`launch/hlo.py`), then a roofline step time and the MFU it implies.

Why extrapolate, and how. `cost_analysis()` counts a while loop's body once,
and the layer groups are a `lax.scan` (a while loop: forward, and backward with
the remat recompute), so the full model's figure misses N - 1 of its N groups.
Compiling the layers unscanned does not fix that: with `prevent_cse=False`
outside a loop XLA merges the remat recompute into the forward pass, so an
unrolled model is not the program that runs (measured on a tiny Griffin with
remat full: 499 MFLOP per unrolled period against 659 in the scanned loop,
the difference being the recompute). A loop of trip count 1 is removed and
merged the same way. So every estimate compiles the real,
scanned step three times at small depth, with the block pattern repeated k
times per scanned group and n >= 2 groups (the tail of leftover layers kept):

  counted(k, n) = E + k n o + k B

E is the work outside the loops that does not grow with depth (embedding,
logits, loss, the leftover layers), o the work outside the loops per pattern
period (the optimizer update and the gradient reductions of its stacked
weights), B one period's loop bodies (forward, and backward with remat). From
(k, n) = (1, 2), (1, 3), (2, 2) the three unknowns follow, and a step of N
scanned periods costs

  step(N) = E + N (o + B),  outside the loops E + N o, inside N B.

The fit is exact when a body of k periods costs k times one period's. It is
not quite: XLA fuses and schedules a longer body a little differently, and work
done once per loop iteration whatever k is lands in E, counted once instead of
N times. On a tiny Griffin the collectives of a two-period body were 4% more
than twice one period's, so the loop part carries an error of a few percent.
Checks: the fit reproduces the FLOPs of an unrolled program within 1%
(tests/test_roofline.py; not the bytes: a scanned program moves more, its
stacked weights and carries, which is why the scanned one is measured), and
`check_full` compares its prediction with a full-depth compile.

Each compile asserts that its only while loops are the two layer scans with
trip count n. A `scan_impl=linear` RG-LRU adds a time loop inside each layer
that cost_analysis counts once: use the Pallas kernel (`auto`). The TPU
compiler's "windowed einsum" loops (collective matmuls) are turned off for the
same reason (COMPILER_OPTIONS).

The collectives need no fit: `launch/hlo.py` reads them off the compiled HLO
with the loops' trip counts, so each variant gives its per-step traffic, split
into outside the loops and inside; a step of N periods is on the straight line
through the two k = 1 variants (n = 2, 3), exact if XLA treats every group
alike.

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

import dataclasses
import gzip
import json
import math
import time

import numpy as np

from launch import hlo, topologies

# Per chip. Google Cloud TPU documentation, system architecture pages
# (cloud.google.com/tpu/docs/v5p, /v5e, /v6e, /v4), checked 2026-11-24:
#   v5p: HBM 2,765 GB/s; bidirectional ICI 1,200 GB/s over 6 ports (3D torus)
#        -> 100 GB/s per port and direction; DCN 50 Gbps per chip.
#   v5e: HBM 819 GB/s; bidirectional ICI 400 GB/s over 4 ports (2D torus)
#        -> 50 GB/s; DCN: two 100 Gbps NICs per 8-chip host -> 25 Gbps per chip.
#   v6e: HBM 1,638 GB/s; bidirectional ICI 800 GB/s over 4 ports -> 100 GB/s;
#        DCN per chip not given.
#   v4:  HBM 1,200 GB/s. ICI is not in the docs' table: 45 GB/s per link and
#        direction over 6 ports is the JAX scaling book's figure ("How to think
#        about TPUs"), not checked against Google's docs. DCN not given.
# Peak bf16 FLOP/s come from launch/topologies.py (the same pages).


@dataclasses.dataclass(frozen=True)
class Bandwidths:
  """Per-chip bandwidths of one TPU generation, bytes/s."""

  hbm: float
  ici_link: float  # one port, one direction
  ici_ports: int  # what the docs' per-chip figure is spread over
  dcn: float | None  # per chip; None where the docs do not give it


BANDWIDTHS = {
    "v5p": Bandwidths(hbm=2765e9, ici_link=100e9, ici_ports=6, dcn=50e9 / 8),
    "v5e": Bandwidths(hbm=819e9, ici_link=50e9, ici_ports=4, dcn=25e9 / 8),
    "v6e": Bandwidths(hbm=1638e9, ici_link=100e9, ici_ports=4, dcn=None),
    "v4": Bandwidths(hbm=1200e9, ici_link=45e9, ici_ports=6, dcn=None),
}

# The TPU compiler decomposes large FSDP matmuls into "windowed einsum" loops
# (collective matmuls: 8 steps of a partial matmul and a ring transfer inside
# each layer), loops that cost_analysis would count once. The estimate's
# compiles turn them off: the same FLOPs, with plain all-gathers and
# reduce-scatters that XLA overlaps asynchronously instead.
COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
# The compiles the fit uses: (pattern copies per scanned group k, groups n).
VARIANTS = ((1, 2), (1, 3), (2, 2))
# cost_analysis's figures (per chip, loop bodies counted once), fitted.
COUNTED = ("flops", "bytes", "xla_seconds")
# The collectives' figures (per chip and step), extrapolated in n.
PER_STEP = tuple(f"{figure}_{where}" for figure in ("ici_bytes", "comm_seconds")
                 for where in ("outside", "loop"))


def bandwidths(tpu: topologies.TpuType) -> Bandwidths:
  """The BANDWIDTHS row of `tpu`'s generation; ValueError for one not listed."""
  prefix = tpu.topology_name.split(":")[0]
  if prefix not in BANDWIDTHS:
    raise ValueError(f"no bandwidths for TPU generation {prefix!r}; known: {list(BANDWIDTHS)}")
  return BANDWIDTHS[prefix]


def group_seconds(collective: hlo.Collective, devices: list, bw: Bandwidths) -> float:
  """Time of one run of `collective` on one chip (see the module docstring)."""
  traffic = collective.traffic_bytes
  if traffic == 0:
    return 0.0
  members = [devices[i] for i in collective.group]
  if len({getattr(d, "slice_index", 0) for d in members}) > 1:
    if bw.dcn is None:
      raise ValueError("this generation has no DCN bandwidth in launch/roofline.py; "
                       "multi-slice estimates need one")
    return traffic / bw.dcn
  coords = np.array([d.coords for d in members])
  axes = max(int(sum(len(set(coords[:, a])) > 1 for a in range(coords.shape[1]))), 1)
  return traffic / (2 * axes * bw.ici_link)


def variant(config, copies: int, groups: int):
  """`config` with `groups` scanned groups of `copies` pattern periods each,
  and the same leftover layers (the tail) as the full model."""
  model = config.model
  tail = len(model.tail_types)
  pattern = model.block_pattern * copies
  return dataclasses.replace(config, model=dataclasses.replace(
      model, block_pattern=pattern, depth=groups * len(pattern) + tail))


def measure(hlo_text: str, cost: dict, devices: list, tpu: topologies.TpuType,
            groups: int) -> dict:
  """The figures of one compiled step, per chip: cost_analysis's (loop bodies
  counted once), and the collectives' per step (trip counts applied), split
  into outside the loops and inside them. `hlo_text` is `compiled.as_text()`,
  `cost` its `cost_analysis()`, `devices` the mesh's, flattened."""
  loops = hlo.while_loops(hlo_text)
  if len(loops) != 2 or any(trips != groups for _, trips in loops):
    raise ValueError(
        f"expected the forward and backward layer scans only, each {groups} trips; "
        f"found while loops with trip counts {[t for _, t in loops]}. A time loop "
        "(scan_impl=linear) or micro-batch loop (grad_accum_steps > 1) nests inside "
        "or around them and cannot be counted this way; use scan_impl=auto.")
  bw = bandwidths(tpu)
  figures = dict(flops=cost["flops"], bytes=cost["bytes accessed"],
                 xla_seconds=cost.get("optimal_seconds", math.nan))
  for where in ("outside", "loop"):
    figures[f"ici_bytes_{where}"] = figures[f"comm_seconds_{where}"] = 0.0
  for c in hlo.collectives(hlo_text, len(devices)):
    where = "loop" if c.in_loop else "outside"
    figures[f"ici_bytes_{where}"] += c.traffic_bytes * c.runs
    figures[f"comm_seconds_{where}"] += group_seconds(c, devices, bw) * c.runs
  return figures


def fit(measured: dict[tuple[int, int], dict]) -> dict[str, tuple[float, float, float]]:
  """(E, o, B) of each cost_analysis figure from counted(k, n) = E + k n o + k B."""
  keys = sorted(measured)
  A = np.array([[1.0, k * n, k] for k, n in keys])
  if np.linalg.matrix_rank(A) < 3:
    raise ValueError(f"variants {keys} do not determine E, o and B; vary k and n")
  return {f: tuple(float(x) for x in np.linalg.lstsq(
      A, np.array([measured[key][f] for key in keys]), rcond=None)[0]) for f in COUNTED}


def extrapolate(coefficients: tuple[float, float, float], periods: int) -> tuple[float, float]:
  """(outside the loops, inside the loops) of a step with `periods` scanned
  pattern periods."""
  E, o, B = coefficients
  return E + periods * o, periods * B


def per_step_line(measured: dict[tuple[int, int], dict], figure: str,
                  periods: int) -> float:
  """A per-step figure (trip counts applied) at `periods`, on the straight line
  through the two one-period-per-group variants (k = 1)."""
  (n1, a), (n2, b) = sorted((n, m[figure]) for (k, n), m in measured.items() if k == 1)[:2]
  return a + (periods - n1) * (b - a) / (n2 - n1)


def roofline(parts: dict[str, tuple[float, float]], tpu: topologies.TpuType) -> dict:
  """Times per chip from per-chip {figure: (outside the loops, inside)}."""
  bw = bandwidths(tpu)
  out = dict(overlapped_s=0.0, serial_s=0.0)
  for i in (0, 1):
    compute = parts["flops"][i] / tpu.peak_bf16_flops
    memory = parts["bytes"][i] / bw.hbm
    comm = parts["comm_seconds"][i]
    out["overlapped_s"] += max(compute, memory, comm)
    out["serial_s"] += max(compute, memory) + comm
  out["compute_s"] = sum(parts["flops"]) / tpu.peak_bf16_flops
  out["memory_s"] = sum(parts["bytes"]) / bw.hbm
  out["comm_s"] = sum(parts["comm_seconds"])
  out["xla_s"] = sum(parts["xla_seconds"])
  return out


def compile_variant(config, accelerator_type: str, num_slices: int, copies: int,
                    groups: int, keep: str | None = None) -> dict:
  """Compiles `variant(config, copies, groups)` for the topology; its figures.
  With `keep`, the HLO text and cost_analysis are first written to
  `keep`.hlo.gz / `keep`.cost.json (re-read by `measure_saved`)."""
  from launch import aot  # JAX starts here, after the topology table's env setup
  step = aot.lower_train_step(variant(config, copies, groups), accelerator_type, num_slices)
  start = time.perf_counter()
  compiled = step.lowered.compile(compiler_options=COMPILER_OPTIONS)
  seconds = time.perf_counter() - start
  text, cost = compiled.as_text(), dict(compiled.cost_analysis())
  if keep:
    with gzip.open(f"{keep}.hlo.gz", "wt") as f:
      f.write(text)
    with open(f"{keep}.cost.json", "w") as f:
      json.dump({"cost": cost, "compile_s": seconds}, f)
  figures = measure(text, cost, list(step.mesh.devices.flat), step.tpu, groups)
  figures["compile_s"] = seconds
  return figures


def measure_saved(keep: str, config, accelerator_type: str, num_slices: int,
                  groups: int) -> dict:
  """`measure` of what `compile_variant(..., keep=keep)` wrote."""
  from launch import aot
  tpu, _ = aot.validate(config, accelerator_type, num_slices)
  mesh = aot.topology_mesh(config.mesh, tpu.get_topology_desc(num_slices).devices)
  with gzip.open(f"{keep}.hlo.gz", "rt") as f:
    text = f.read()
  with open(f"{keep}.cost.json") as f:
    saved = json.load(f)
  figures = measure(text, saved["cost"], list(mesh.devices.flat), tpu, groups)
  figures["compile_s"] = saved["compile_s"]
  return figures


def estimate(config, accelerator_type: str, num_slices: int = 1,
             measure_fn=compile_variant) -> dict:
  """The roofline row of `config` on `num_slices` x `accelerator_type`:
  per-chip figures of the full step (extrapolated), times and MFU.
  `measure_fn(config, accelerator_type, num_slices, copies, groups)` gives
  one variant's figures (tests and caches pass their own)."""
  from launch import aot
  from model import flops
  tpu, sizes = aot.validate(config, accelerator_type, num_slices)
  periods = config.model.num_groups
  measured = {(k, n): measure_fn(config, accelerator_type, num_slices, k, n)
              for k, n in VARIANTS}
  coefficients = fit(measured)
  parts = {f: extrapolate(coefficients[f], periods) for f in COUNTED}
  per_step = {f: per_step_line(measured, f, periods) for f in PER_STEP}
  if not all(m["xla_seconds"] >= 0 for m in measured.values()):
    # libtpu 0.0.42 reports negative optimal_seconds for v5e: no estimate.
    parts["xla_seconds"] = (math.nan, math.nan)
  for figure in ("ici_bytes", "comm_seconds"):
    parts[figure] = (per_step[f"{figure}_outside"], per_step[f"{figure}_loop"])
  times = roofline(parts, tpu)
  chips = tpu.chips * num_slices
  B, T = config.data.global_batch_size, config.data.seq_len
  model_flops = flops.train_flops(config.model, B, T)
  peak = chips * tpu.peak_bf16_flops
  return dict(
      accelerator_type=accelerator_type, num_slices=num_slices, chips=chips, mesh=sizes,
      global_batch=B, seq_len=T, remat=config.model.remat.value, periods=periods,
      model_flops=model_flops,
      analytic_hardware_flops=model_flops + flops.remat_flops(config.model, B, T),
      hardware_flops=chips * sum(parts["flops"]),
      hbm_bytes_per_chip=sum(parts["bytes"]), ici_bytes_per_chip=sum(parts["ici_bytes"]),
      **times, mfu=model_flops / (peak * times["overlapped_s"]),
      mfu_serial=model_flops / (peak * times["serial_s"]),
      mfu_xla=model_flops / (peak * times["xla_s"]),
      # No overlap at all: matmuls, memory-bound fusions and transfers in turn.
      sum_s=times["compute_s"] + times["memory_s"] + times["comm_s"],
      mfu_sum=model_flops / (peak * (times["compute_s"] + times["memory_s"] + times["comm_s"])),
      coefficients=coefficients, measured=measured)


def check_full(row: dict, full: dict) -> dict[str, tuple[float, float]]:
  """(predicted, compiled) figures of the full-depth compile `full` (counted as
  `measure` counts): cost_analysis's from the fit (E + N o + B), the
  collectives' from the line through the k = 1 variants."""
  N = row["periods"]
  out = {}
  for figure in COUNTED:
    E, o, B = row["coefficients"][figure]
    out[figure] = (E + N * o + B, full[figure])
  for figure in PER_STEP:
    out[figure] = (per_step_line(row["measured"], figure, N), full[figure])
  return out


def format_check(check: dict[str, tuple[float, float]]) -> str:
  """`figure +x.xx%` (predicted over compiled) for each figure of `check_full`."""
  return ", ".join(
      f"{figure} {predicted / actual - 1:+.2%} ({predicted - actual:+.3g})" if actual
      else f"{figure} {predicted:.3g} vs 0"
      for figure, (predicted, actual) in check.items())
