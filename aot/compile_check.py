"""Compile the real train step for a TPU pod on this (CPU) machine: does it fit?

    python -m aot.compile_check --config=configs/griffin_14b.py --topology=v5p-128 \
        [--num_slices=N] [--config.section.field=value ...]

Builds the fake devices of the TPU topology (libtpu, the `tpu` or `test` extra),
the mesh from the config's mesh section over them, the sharded abstract state,
and compiles the train step `trainer/program.py` builds for a run of the config,
for (global_batch, seq_len) int32 batches. Prints the
per-device memory (XLA's memory_analysis), the analytic step FLOPs
(model/flops.py), a compute-only roofline step time and the MFU bound; exits 1
when the step does not fit the chip's HBM. No TPU, no allocation: only the
compiler runs. `python -m aot.roofline` adds HBM
bytes and collectives to the step time estimate.
"""

import os
import sys
import time
from typing import NamedTuple

from common import cli, config_flag
from common.checks import check_int
from sharding import topologies

# Before JAX starts: the host's own devices stay CPU (with libtpu installed JAX
# would otherwise try to open a TPU), and libtpu loads quietly.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
topologies.quiet_libtpu()

import jax  # noqa: E402
from absl import flags  # noqa: E402

from model import flops  # noqa: E402
from sharding import rules  # noqa: E402
from trainer import config as config_lib  # noqa: E402
from trainer.program import Program, build_program  # noqa: E402

_MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def validate(config: config_lib.Config, accelerator_type: str,
             num_slices: int) -> tuple[topologies.TpuType, dict[str, int]]:
  """Checks that need no compile (nor libtpu); returns the TPU type and the
  mesh axis sizes."""
  tpu = topologies.get(accelerator_type)
  check_int("num_slices", num_slices)
  sizes = config.mesh.resolve(tpu.chips * num_slices, num_slices)
  rules.check_batch_divisible(config.data.global_batch_size, sizes,
                              config.optimizer.grad_accum_steps,
                              f" on {num_slices} x {accelerator_type}")
  return tpu, sizes


class LoweredStep(NamedTuple):
  """The train step lowered for a TPU topology, and what it was lowered over."""
  tpu: topologies.TpuType
  sizes: dict[str, int]  # mesh axis sizes
  program: Program
  lowered: jax.stages.Lowered


def lower_train_step(config: config_lib.Config, accelerator_type: str,
                     num_slices: int = 1) -> LoweredStep:
  """The program a run of `config` compiles (`trainer/program.py`), lowered
  over the fake devices of `num_slices` x `accelerator_type`;
  `.lowered.compile()` runs the TPU compiler. Raises ValueError for bad
  input, before anything is traced."""
  tpu, sizes = validate(config, accelerator_type, num_slices)
  program = build_program(config, tpu.get_topology_desc(num_slices).devices)
  lowered = program.train_step.lower(program.abstract_state(),
                                     (config.data.global_batch_size, config.data.seq_len))
  return LoweredStep(tpu, sizes, program, lowered)


def compile_report(config: config_lib.Config, accelerator_type: str,
                   num_slices: int = 1) -> dict:
  """Compiles the train step for `num_slices` x `accelerator_type`.

  Returns the report: memory in bytes per device (None where the compiler ran
  out of memory), `fits`, and `error` (the compiler's message) when it did not.
  Raises ValueError for bad input, before anything compiles.
  """
  start = time.perf_counter()  # lowering included, as before the split
  tpu, sizes, program, lowered = lower_train_step(config, accelerator_type, num_slices)
  B, T = config.data.global_batch_size, config.data.seq_len
  chips, chip = tpu.chips * num_slices, tpu.generation
  train = flops.train_flops(config.model, B, T)
  hardware = train + flops.remat_flops(config.model, B, T)
  report = dict(
      accelerator_type=accelerator_type, topology=tpu.topology_name,
      num_slices=num_slices, chips=chips, mesh=sizes, global_batch=B, seq_len=T,
      remat=config.model.remat.value, params=sum(
          a.size for a in jax.tree.leaves(program.setup.abstract.params)),
      hbm_bytes=chip.usable_hbm_bytes, hbm_nominal_bytes=chip.hbm_bytes,
      train_flops=train, hardware_flops=hardware,
      roofline_step_s=hardware / (chips * chip.peak_bf16_flops),
      mfu_bound=train / hardware, error=None)
  try:
    compiled = topologies.compile_only(lowered)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report.update({f"{f}_bytes": None for f in (*_MEMORY_FIELDS, "peak", "total")},
                  xla_flops_per_device=None, fits=False, error=str(e).splitlines()[0],
                  compile_s=time.perf_counter() - start)
    return report
  report["compile_s"] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  for field in _MEMORY_FIELDS:
    report[f"{field}_bytes"] = getattr(memory, f"{field}_size_in_bytes")
  report["peak_bytes"] = memory.peak_memory_in_bytes
  # An upper bound on the live set: every buffer at once, donated ones once.
  report["total_bytes"] = (sum(report[f"{f}_bytes"] for f in _MEMORY_FIELDS)
                           - 2 * report["alias_bytes"])
  cost = compiled.cost_analysis()
  report["xla_flops_per_device"] = (cost or {}).get("flops")
  need = max(report["peak_bytes"], report["total_bytes"])
  report["fits"] = need <= report["hbm_bytes"]
  if not report["fits"]:
    report["error"] = (f"{need / 2**30:.2f} GiB per device exceeds the "
                       f"{report['hbm_bytes'] / 2**30:.2f} GiB usable HBM")
  return report


def format_report(r: dict) -> str:
  """The report as the lines `python -m aot.compile_check` prints."""
  gib = lambda n: "n/a" if n is None else f"{n / 2**30:.2f} GiB"  # noqa: E731
  mesh = " x ".join(f"{axis} {size}" for axis, size in r["mesh"].items())
  lines = [
      f"{r['num_slices']} x {r['accelerator_type']} ({r['topology']}): {r['chips']} "
      f"chips, mesh {mesh}",
      f"model {r['params'] / 1e9:.2f}B params, global batch {r['global_batch']} x "
      f"{r['seq_len']} tokens, remat {r['remat']}, compile {r['compile_s']:.1f} s",
      "memory per device (XLA memory_analysis):"]
  lines += [f"  {f:<15} {gib(r[f + '_bytes'])}" for f in _MEMORY_FIELDS]
  lines += [
      f"  {'peak':<15} {gib(r['peak_bytes'])} (XLA's peak_memory_in_bytes)",
      f"  {'total':<15} {gib(r['total_bytes'])} (argument + output + temp + code, "
      "donated buffers once)",
      f"  HBM per chip    {gib(r['hbm_bytes'])} usable ({gib(r['hbm_nominal_bytes'])} "
      "nominal); fits when max(peak, total) <= usable" + (
          "" if r["peak_bytes"] is None else
          f" ({100 * max(r['peak_bytes'], r['total_bytes']) / r['hbm_bytes']:.0f}% here)"),
      f"model FLOPs per step (analytic, model/flops.py): {r['train_flops'] / 1e12:.1f} T",
      f"  with remat recompute: {r['hardware_flops'] / 1e12:.1f} T",
      "  XLA cost_analysis per device (counts a scanned layer group once): " + (
          "n/a" if r["xla_flops_per_device"] is None
          else f"{r['xla_flops_per_device'] / 1e12:.3f} T"),
      f"compute-only roofline step time at peak bf16: {r['roofline_step_s'] * 1e3:.1f} ms "
      "(python -m aot.roofline adds HBM and ICI); "
      f"MFU bound (model / hardware FLOPs): {100 * r['mfu_bound']:.1f}%",
      "FITS" if r["fits"] else f"DOES NOT FIT: {r['error']}"]
  return "\n".join(lines)


def main():
  """Flags are defined here, not at import, so tests can import this module."""
  holder = config_flag.define_config_flag()
  topology = flags.DEFINE_string(
      "topology", None, f"Accelerator type, one of: {', '.join(topologies.TPU_TYPES)}.")
  num_slices = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN.")
  flags.mark_flags_as_required(["config", "topology"])

  def run():
    report = compile_report(config_lib.build(config_flag.flag_config(holder)), topology.value,
                            num_slices.value)
    print(format_report(report))
    sys.exit(0 if report["fits"] else 1)

  cli.run(run)


if __name__ == "__main__":
  main()
