"""Roofline estimate of one train step on a TPU pod, from compile-only checks.

Per chip and step: hardware FLOPs and HBM bytes (XLA's `cost_analysis()` of
the compiled step), ICI bytes and time (the collectives of the compiled HLO,
`aot/hlo.py`), then a roofline step time and the MFU it implies.

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

The collectives need no fit: `aot/hlo.py` reads them off the compiled HLO
with the loops' trip counts (and so the Mosaic kernels XLA gives no cost,
whose FLOPs and bytes are added to cost_analysis's), so each variant gives
its per-step traffic, split into outside the loops and inside; a step of N periods is on the straight line
through the two k = 1 variants (n = 2, 3), exact if XLA treats every group
alike.

The compiles and their figures are `aot/variants.py`; the step time and MFU
from the extrapolated figures, `aot/step_time.py`.
"""

import math

import numpy as np

from aot import step_time, variants

# The compiles the fit uses: (pattern copies per scanned group k, groups n).
VARIANTS = ((1, 2), (1, 3), (2, 2))
# cost_analysis's figures (per chip, loop bodies counted once), fitted.
COUNTED = ("flops", "bytes", "xla_seconds")
# The collectives' and unpriced kernels' figures (per chip and step),
# extrapolated in n.
PER_STEP = tuple(f"{figure}_{where}" for figure in ("ici_bytes", "comm_seconds",
                                                    "kernel_flops", "kernel_bytes")
                 for where in ("outside", "loop"))


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


def estimate(config, accelerator_type: str, num_slices: int = 1,
             measure_fn=variants.compile_variant) -> dict:
  """The roofline row of `config` on `num_slices` x `accelerator_type`:
  per-chip figures of the full step (extrapolated), times and MFU.
  `measure_fn(config, accelerator_type, num_slices, copies, groups)` gives
  one variant's figures (tests and caches pass their own)."""
  from aot import compile_check
  from model import flops
  tpu, sizes = compile_check.validate(config, accelerator_type, num_slices)
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
  # The splash kernels' work, which XLA does not count (`aot/kernel_cost.py`).
  for figure in ("flops", "bytes"):
    parts[figure] = tuple(counted + per_step[f"kernel_{figure}_{where}"]
                          for counted, where in zip(parts[figure], ("outside", "loop")))
  times = step_time.roofline(parts, tpu)
  chips = tpu.chips * num_slices
  B, T = config.data.global_batch_size, config.data.seq_len
  model_flops = flops.train_flops(config.model, B, T)
  peak = chips * tpu.generation.peak_bf16_flops
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
  `variants.measure` counts): cost_analysis's from the fit (E + N o + B), the
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
