"""Roofline step time and MFU of the 1B, 7B and 14B configs on TPU pods,
estimated from compile-only checks on this CPU host (no TPU needed).

Command, from the repository root (libtpu from the `tpu` or `test` extra):
  python -m aot.roofline [--rows=all] [--cache=/tmp/roofline_cache.json]
      [--check_full=griffin_1b@v5p-16]
Three compiles per row, one at a time, 2-11 minutes each on a shared 2-core
host (`--rows=all`, every row of ROWS below, takes hours; name the rows). The HLO of every compile is kept
gzipped in roofline_hlo/ beside the cache, so a change to the analysis re-reads
it instead of compiling again.

Each row compiles the real train step three times at small depth and
extrapolates to the config's depth (`aot/roofline_fit.py` says how and why);
`--check_full` also compiles the listed rows at full depth and prints how far
the fit's prediction of that compile's figures is from XLA's. Measurements are
cached in `--cache` (keyed by config, overrides, topology and variant), so a
rerun prints the table without compiling.

Every row sets `model.scan_impl=auto` (the default): on TPU that is the Pallas
RG-LRU kernel. A `linear` scan is a lax.scan over 2048 time steps inside each
layer: sequential steps that a roofline cannot price, and a loop inside the
layer loop that cost_analysis would count once.
"""

import json
import math
import os
import sys
from typing import NamedTuple

from absl import flags

from aot import roofline_fit, variants
from common import cli

_ROWS = flags.DEFINE_list("rows", ["all"], "Row names (config@topology[+knob]) or all.")
_CACHE = flags.DEFINE_string("cache", "/tmp/roofline_cache.json", "Measurement cache.")
_CHECK_FULL = flags.DEFINE_list("check_full", [], "Rows to compile at full depth too.")

# Issue 21's targets, on the estimate with nothing overlapped (column C).
TARGETS = {"griffin_7b@v5p-64": 0.65, "griffin_14b@v5p-128": 0.65,
           "griffin_7b@v5e-256": 0.45}
AUTO = {"model.scan_impl": "auto"}
class Row(NamedTuple):
  """One table row: configs/<config>.py with `overrides` (dotted keys) on
  `num_slices` x `accelerator_type`."""
  name: str
  config: str
  accelerator_type: str
  overrides: dict
  num_slices: int = 1


# The meshes are the config files' (fsdp fixed, data = the rest), as
# `python -m aot.compile_check` compiles them, unless a row's overrides say.
ROWS = (
    Row("griffin_1b@v5e-16", "griffin_1b", "v5e-16", {}),
    # v5p-16 is 8 chips: the config's fsdp 16 becomes 8 (8 rows per chip).
    Row("griffin_1b@v5p-16", "griffin_1b", "v5p-16", {"mesh.ici_fsdp": 8}),
    Row("griffin_7b@v5p-64", "griffin_7b", "v5p-64", {}),
    Row("griffin_7b@v5e-256", "griffin_7b", "v5e-256", {}),
    Row("griffin_14b@v5p-128", "griffin_14b", "v5p-128", {}),
    # The 7B and 14B configs keep the matmul outputs (remat save_matmuls);
    # these rows show what recomputing them, a quarter of full remat's FLOPs,
    # costs.
    Row("griffin_7b@v5p-64+remat_full", "griffin_7b", "v5p-64", {"model.remat": "full"}),
    Row("griffin_7b@v5e-256+remat_full", "griffin_7b", "v5e-256", {"model.remat": "full"}),
    Row("griffin_14b@v5p-128+remat_full", "griffin_14b", "v5p-128", {"model.remat": "full"}),
    # Splash attention is the default on TPU (attention_impl=auto); these
    # rows are the XLA attention it replaced, on the same tree.
    Row("griffin_7b@v5p-64+xla_attention", "griffin_7b", "v5p-64",
        {"model.attention_impl": "xla"}),
    Row("griffin_7b@v5e-256+xla_attention", "griffin_7b", "v5e-256",
        {"model.attention_impl": "xla"}),
    Row("griffin_14b@v5p-128+xla_attention", "griffin_14b", "v5p-128",
        {"model.attention_impl": "xla"}),
    # The paper's tensor-parallel layout (sharding/rules.py): tensor t takes
    # t of the config's fsdp chips (fsdp / t x t), data as before.
    *(Row(f"griffin_{size}@{tpu}+tensor{t}", f"griffin_{size}", tpu,
          {"mesh.ici_fsdp": fsdp // t, "mesh.ici_tensor": t})
      for size, tpu, fsdp in (("7b", "v5p-64", 32), ("7b", "v5e-256", 32),
                              ("14b", "v5p-128", 64))
      for t in (2, 4, 8)),
    # 14B on v5e-256: one row a chip, so the saved matmul outputs (a quarter of
    # v5p-128's 48 GiB at four rows) would not fit 15.75 GiB; full remat.
    Row("griffin_14b@v5e-256", "griffin_14b", "v5e-256", {"model.remat": "full"}),
    *(Row(f"griffin_14b@v5e-256+tensor{t}", "griffin_14b", "v5e-256",
          {"model.remat": "full", "mesh.ici_fsdp": 64 // t, "mesh.ici_tensor": t})
      for t in (2, 4, 8)),
    # Two rows a chip on v5e-256, where one leaves the step bound by the
    # weights' HBM traffic and gathers.
    Row("griffin_7b@v5e-256+batch512", "griffin_7b", "v5e-256",
        {"data.global_batch_size": 512}),
    # Two slices, data parallel over DCN; each slice keeps its batch.
    Row("griffin_7b@2xv5p-64", "griffin_7b", "v5p-64",
        {"mesh.dcn_data": -1, "data.global_batch_size": 512}, num_slices=2),
    Row("griffin_7b@2xv5e-256", "griffin_7b", "v5e-256",
        {"mesh.dcn_data": -1, "data.global_batch_size": 512}, num_slices=2),
    Row("griffin_14b@2xv5p-128", "griffin_14b", "v5p-128",
        {"mesh.dcn_data": -1, "data.global_batch_size": 512}, num_slices=2),
)


def build_config(config_name: str, overrides: dict):
  """configs/<config_name>.py with `overrides` (dotted keys) and scan_impl=auto."""
  import importlib

  from trainer import config as config_lib
  cd = importlib.import_module(f"configs.{config_name}").get_config()
  return config_lib.build(config_lib.with_overrides(cd, {**AUTO, **overrides}))


class Cache:
  """Variant figures on disk, so a table reruns without compiling."""

  def __init__(self, path: str):
    self.path = path
    self.entries = json.load(open(path)) if path and os.path.exists(path) else {}

  def measure_fn(self, row_name: str):
    def measure(config, accelerator_type, num_slices, copies, groups):
      key = f"{row_name}|{accelerator_type}|{num_slices}|k={copies}|n={groups}"
      # Entries from before a figure was added are measured again from the HLO.
      if not set(roofline_fit.PER_STEP) <= set(self.entries.get(key, {})):
        keep = os.path.join(os.path.dirname(os.path.abspath(self.path)), "roofline_hlo",
                            key.replace("|", "_").replace("@", "_").replace("=", ""))
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        if os.path.exists(f"{keep}.cost.json"):  # compiled before; re-read
          figures = variants.measure_saved(keep, config, accelerator_type, num_slices, groups)
        else:
          print(f"compiling {key} ...", file=sys.stderr, flush=True)
          figures = variants.compile_variant(config, accelerator_type, num_slices, copies,
                                             groups, keep=keep)
          print(f"  {figures['compile_s']:.0f} s", file=sys.stderr, flush=True)
        self.entries[key] = figures
        with open(self.path, "w") as f:
          json.dump(self.entries, f, indent=1)
      return self.entries[key]
    return measure


def _xla(r: dict) -> str:
  """XLA's own step estimate and the MFU it implies; n/a where it has none."""
  if math.isnan(r["xla_s"]):
    return "n/a"
  return f"{r['xla_s']:.3f} ({100 * r['mfu_xla']:.1f}%)"


def _verdict(r: dict, target: float) -> str:
  """The estimates against `target`, judged on C (nothing overlapped), the
  most pessimistic."""
  verdict = "meets" if r["mfu_sum"] >= target else "does not meet"
  return (f"estimated MFU {100 * r['mfu_sum']:.1f}% with nothing overlapped "
          f"(collectives exposed: {100 * r['mfu_serial']:.1f}%; roofline: "
          f"{100 * r['mfu']:.1f}%; XLA's step estimate: {_xla(r)}): {verdict} the "
          f"{100 * target:.0f}% target (an estimate from compiles, not a measurement).")


def table(rows: list[tuple[str, dict]]) -> str:
  lines = [
      "| config | TPU type | mesh (data x fsdp x tensor) | batch x seq | remat | model "
      "TFLOPs | hardware TFLOPs (XLA + kernels) | HBM GB / chip | ICI GB / chip | compute s | "
      "memory s | comm s | est. step s (A / B / C) | est. MFU (A / B / C) | "
      "XLA optimal s (MFU) |",
      "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows:
    mesh = " x ".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    if r["mesh"]["sequence"] > 1:
      mesh += f" (sequence {r['mesh']['sequence']})"
    tpu = (f"{r['num_slices']} x " if r["num_slices"] > 1 else "") + r["accelerator_type"]
    lines.append(
        f"| {name.split('@')[0]}{name[name.index('+'):] if '+' in name else ''} | "
        f"{tpu} | {mesh} | {r['global_batch']} x {r['seq_len']} | "
        f"{r['remat']} | {r['model_flops'] / 1e12:,.0f} | {r['hardware_flops'] / 1e12:,.0f} | "
        f"{r['hbm_bytes_per_chip'] / 1e9:,.0f} | {r['ici_bytes_per_chip'] / 1e9:.1f} | "
        f"{r['compute_s']:.3f} | {r['memory_s']:.3f} | {r['comm_s']:.3f} | "
        f"{r['overlapped_s']:.3f} / {r['serial_s']:.3f} / {r['sum_s']:.3f} | "
        f"{100 * r['mfu']:.1f}% / {100 * r['mfu_serial']:.1f}% / {100 * r['mfu_sum']:.1f}% | "
        f"{_xla(r)} |")
  lines.append("\nA: max(compute, memory, collectives) per part (outside the layer loops, "
               "inside); B: collectives not overlapped; C: nothing overlapped.")
  return "\n".join(lines)


def main():
  known = {row.name: row for row in ROWS}
  names = list(known) if _ROWS.value == ["all"] else _ROWS.value
  for name in names + _CHECK_FULL.value:
    if name not in known:
      raise ValueError(f"unknown row {name!r}; valid: {', '.join(known)} or all")
  cache = Cache(_CACHE.value)
  results = []
  for name in names:
    row = known[name]
    results.append((name, roofline_fit.estimate(
        build_config(row.config, row.overrides), row.accelerator_type, row.num_slices,
        measure_fn=cache.measure_fn(name))))
  print(table(results))
  for name, r in results:
    if name in TARGETS:
      print(f"\n{name}: {_verdict(r, TARGETS[name])}")
  for name in _CHECK_FULL.value:
    row = known[name]
    config = build_config(row.config, row.overrides)
    estimate = dict(results)[name] if name in dict(results) else roofline_fit.estimate(
        config, row.accelerator_type, row.num_slices, measure_fn=cache.measure_fn(name))
    full = cache.measure_fn(name)(config, row.accelerator_type, row.num_slices, 1,
                                  config.model.num_groups)
    print(f"\n{name} at full depth: " + roofline_fit.format_check(
        roofline_fit.check_full(estimate, full)))


if __name__ == "__main__":
  cli.run(main)
