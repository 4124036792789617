"""The shallow compiles the roofline fit measures (`aot/roofline_fit.py`):
the real, scanned train step with k pattern periods per scanned group and n
groups, and its per-chip figures.

Each compile asserts that its only while loops are the two layer scans with
trip count n. A `scan_impl=linear` RG-LRU adds a time loop inside each layer
that cost_analysis counts once: use the Pallas kernel (`auto`). The TPU
compiler's "windowed einsum" loops (collective matmuls) are turned off for the
same reason (COMPILER_OPTIONS).

The collectives are read off the compiled HLO by `aot/hlo.py` with the loops'
trip counts, so each variant gives its per-step traffic, split into outside
the loops and inside, and its time (`aot/step_time.py`). So are the Mosaic
kernels that give XLA no cost estimate (splash attention), priced by
`aot/kernel_cost.py`: their FLOPs and streamed bytes per step, split alike.
"""

import dataclasses
import gzip
import json
import math
import time

from aot import hlo, kernel_cost, step_time
from sharding import topologies

# The TPU compiler decomposes large FSDP matmuls into "windowed einsum" loops
# (collective matmuls: 8 steps of a partial matmul and a ring transfer inside
# each layer), loops that cost_analysis would count once. The estimate's
# compiles turn them off: the same FLOPs, with plain all-gathers and
# reduce-scatters that XLA overlaps asynchronously instead.
COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
# On several slices libtpu's collective pipeliner peels the backward scan's
# first iteration out of the loop (the whole scan at two groups) to overlap
# the gradients' all-reduce over DCN: cost_analysis then counts that
# iteration twice or every one, and no fit over the layer count holds. The
# estimate's multi-slice compiles turn it off: the same FLOPs (a 7B variant
# of 3 groups on 2 x v5p-64 then counts what one slice's does), the DCN
# all-reduce issued at the end instead of pipelined.
MULTI_SLICE_OPTIONS = {"xla_tpu_enable_collective_pipeliner": False,
                       "xla_tpu_data_parallel_dcn_ar_dual_pipelining": False,
                       "xla_tpu_explicit_control_dcn_collective_pipelining": False}


def variant(config, copies: int, groups: int):
  """`config` with `groups` scanned groups of `copies` pattern periods each,
  and the same leftover layers (the tail) as the full model."""
  model = config.model
  tail = len(model.tail_types)
  pattern = model.block_pattern * copies
  return dataclasses.replace(config, model=dataclasses.replace(
      model, block_pattern=pattern, depth=groups * len(pattern) + tail))


def measure(hlo_text: str, cost: dict, devices: list, tpu: topologies.TpuType,
            groups: int, attention_window: int | None = None) -> dict:
  """The figures of one compiled step, per chip: cost_analysis's (loop bodies
  counted once), and the collectives' and unpriced kernels' per step (trip
  counts applied), split into outside the loops and inside them. `hlo_text`
  is `compiled.as_text()`, `cost` its `cost_analysis()`, `devices` the mesh's,
  flattened; `attention_window` the model's (its splash kernels' mask)."""
  loops = hlo.while_loops(hlo_text)
  if len(loops) != 2 or any(trips != groups for _, trips in loops):
    raise ValueError(
        f"expected the forward and backward layer scans only, each {groups} trips; "
        f"found while loops with trip counts {[t for _, t in loops]}. A time loop "
        "(scan_impl=linear) or micro-batch loop (grad_accum_steps > 1) nests inside "
        "or around them and cannot be counted this way; use scan_impl=auto.")
  figures = dict(flops=cost["flops"], bytes=cost["bytes accessed"],
                 xla_seconds=cost.get("optimal_seconds", math.nan))
  for where in ("outside", "loop"):
    for figure in ("ici_bytes", "comm_seconds", "kernel_flops", "kernel_bytes"):
      figures[f"{figure}_{where}"] = 0.0
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  for c in hlo.collectives(hlo_text, len(devices), slices):
    where = "loop" if c.in_loop else "outside"
    figures[f"ici_bytes_{where}"] += c.traffic_bytes * c.runs
    figures[f"comm_seconds_{where}"] += (
        step_time.group_seconds(c, devices, tpu.generation) * c.runs)
  for call in hlo.kernel_calls(hlo_text):
    where = "loop" if call.in_loop else "outside"
    flops, streamed = kernel_cost.kernel_cost(call, attention_window)
    figures[f"kernel_flops_{where}"] += flops * call.runs
    figures[f"kernel_bytes_{where}"] += streamed * call.runs
  return figures


def compile_variant(config, accelerator_type: str, num_slices: int, copies: int,
                    groups: int, keep: str | None = None) -> dict:
  """Compiles `variant(config, copies, groups)` for the topology; its figures.
  With `keep`, the HLO text and cost_analysis are first written to
  `keep`.hlo.gz / `keep`.cost.json (re-read by `measure_saved`)."""
  from aot import compile_check  # JAX starts here, after the topology table's env setup
  step = compile_check.lower_train_step(variant(config, copies, groups), accelerator_type, num_slices)
  start = time.perf_counter()
  options = {**COMPILER_OPTIONS, **(MULTI_SLICE_OPTIONS if num_slices > 1 else {})}
  compiled = topologies.compile_only(step.lowered, compiler_options=options)
  seconds = time.perf_counter() - start
  text, cost = compiled.as_text(), dict(compiled.cost_analysis())
  if keep:
    with gzip.open(f"{keep}.hlo.gz", "wt") as f:
      f.write(text)
    with open(f"{keep}.cost.json", "w") as f:
      json.dump({"cost": cost, "compile_s": seconds}, f)
  figures = measure(text, cost, list(step.program.mesh.devices.flat), step.tpu, groups,
                    config.model.attention_window)
  figures["compile_s"] = seconds
  return figures


def measure_saved(keep: str, config, accelerator_type: str, num_slices: int,
                  groups: int) -> dict:
  """`measure` of what `compile_variant(..., keep=keep)` wrote."""
  from aot import compile_check
  from sharding.mesh import make_mesh
  tpu, _ = compile_check.validate(config, accelerator_type, num_slices)
  mesh = make_mesh(config.mesh, tpu.get_topology_desc(num_slices).devices)
  with gzip.open(f"{keep}.hlo.gz", "rt") as f:
    text = f.read()
  with open(f"{keep}.cost.json") as f:
    saved = json.load(f)
  figures = measure(text, saved["cost"], list(mesh.devices.flat), tpu, groups,
                    config.model.attention_window)
  figures["compile_s"] = saved["compile_s"]
  return figures
